"""The holes the two-person rule had before commit 0491d88, each shown closed:

1. an approval approves exactly the request the approver saw (not whatever waits by then);
2. `release approve` without --request shows the request and asks, and never approves blind;
3. a withdrawal that lost the race to an approval is refused and audited as refused;
4. on a two-person environment, resume and retry-failed are requests another person approves
   (pause and abort, the brakes, stay one person's);
5. every audit row names its channel (and the shell's OS account); a shell approval of a shell
   request from the same OS account is refused.

No worker runs: `send_task` is replaced, and counting its calls tells what would have run.
"""

import os
import pwd
from datetime import timedelta
from io import StringIO
from unittest.mock import patch

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from releases import services
from releases.models import AuditEvent, LaunchRequest, SiteResult, StepRun
from releases.services import approvals
from tests.admin_helpers import confirm_launch, messages_of, url

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]

# The two-person fixtures are tests/admin/test_launching_approval.py's: alice requests, bob approves, PROD
# requires two people, steps 2-11 of 2.8.5 are done; no task is sent (`sent_tasks`, used by every test).
# Tests take them as parameters, which ruff reads as redefinitions of the imported names (F811).
# ruff: noqa: F811
from tests.admin.test_launching_approval import approver, plan, requester  # noqa: E402, F401

# -- helpers --------------------------------------------------------------------------------------


class Terminal(StringIO):
    """A stdin that says it is a terminal, holding what the operator types."""

    def isatty(self):
        return True


def release(*args, stdin=None):
    """`manage.py release ARGS`; returns (stdout, stderr)."""
    out, err = StringIO(), StringIO()
    extra = {} if stdin is None else {"stdin": stdin}
    call_command("release", *args, stdout=out, stderr=err, **extra)
    return out.getvalue(), err.getvalue()


def step12(plan) -> StepRun:
    return StepRun.objects.select_related("environment").get(plan=plan, number=12)


def pending(plan) -> LaunchRequest | None:
    return LaunchRequest.objects.filter(step__plan=plan, step__number=12, state="pending").first()


def refused(action, username) -> int:
    return AuditEvent.objects.filter(action=action, outcome="refused", username=username).count()


def ok_trail(step) -> list[tuple[str, str]]:
    rows = AuditEvent.objects.filter(step=step, outcome="ok").order_by("id")
    return list(rows.values_list("action", "username"))


def paused(step, *, failed_site: bool = False, state: str = "paused") -> None:
    """Step `step` paused (or failed) as the engine leaves it, optionally with a failed site."""
    StepRun.objects.filter(pk=step.pk).update(
        state=state, started_at=timezone.now(), launched_by_username="alice", message="threshold reached"
    )
    if failed_site:
        SiteResult.objects.create(step=step, site_id="f" * 24, path="broken", state="failed", message="500")


def running(step) -> None:
    """Running, held by a live worker (an abort is then a request to the worker, not at once)."""
    now = timezone.now()
    StepRun.objects.filter(pk=step.pk).update(
        state="running",
        started_at=now,
        launched_by_username="alice",
        lease_owner="worker-1",
        lease_expires_at=now + timedelta(minutes=10),
    )


def shell_account() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


# -- 1. an approval approves what the approver saw ------------------------------------------------


@pytest.mark.parametrize("channel", ["admin", "shell"])
def test_an_approval_approves_the_request_shown_not_the_one_waiting_by_then(
    client, requester, approver, plan, sent_tasks, channel
):
    """Issue scenario: bob opens the approval of alice's step-12 launch; meanwhile alice withdraws
    it and requests the whole PROD stage; bob's approval of what he saw must not launch the stage."""
    client.force_login(requester)
    confirm_launch(client, plan, 12, typed="PROD")
    shown = pending(plan)
    assert shown is not None and not shown.stage

    client.force_login(approver)
    page = client.get(url("approve", plan, 12)).content.decode()

    client.force_login(requester)
    client.post(url("withdraw", plan, 12), {"request": shown.pk})
    confirm_launch(client, plan, 12, stage=True, typed="PROD")
    stage = pending(plan)
    assert stage is not None and stage.stage and stage.pk != shown.pk

    if channel == "admin":
        client.force_login(approver)
        response = client.post(url("approve", plan, 12), {"request": shown.pk})
        level, text = messages_of(response)[-1]
        assert level == "error" and f"request #{shown.pk} is no longer pending" in text
    else:
        with pytest.raises(CommandError, match=f"request #{shown.pk} is no longer pending"):
            release("approve", "2.8.5", "--step", "12", "--request", str(shown.pk), "--user", "bob")

    assert step12(plan).state == "pending"
    assert sent_tasks.call_count == 0
    assert pending(plan).pk == stage.pk  # the stage request still waits, untouched
    assert LaunchRequest.objects.get(pk=shown.pk).state == "withdrawn"
    assert refused("approve", "bob") == 1
    # What bob was shown named the request (the page, and the form he posted).
    assert f"Request #{shown.pk}" in page
    assert f'<input type="hidden" name="request" value="{shown.pk}">' in page


def test_an_admin_approval_naming_no_request_is_refused(client, requester, approver, plan, sent_tasks):
    client.force_login(requester)
    confirm_launch(client, plan, 12, stage=True, typed="PROD")
    waiting = pending(plan)

    client.force_login(approver)
    for data in ({}, {"request": ""}, {"request": "not-a-number"}):
        response = client.post(url("approve", plan, 12), data)
        level, text = messages_of(response)[-1]
        assert level == "error" and "names no request" in text, text

    assert step12(plan).state == "pending" and sent_tasks.call_count == 0
    assert pending(plan).pk == waiting.pk
    assert refused("approve", "bob") == 3
    assert not AuditEvent.objects.filter(action="approve", outcome="ok").exists()


# -- 2. release approve without --request shows the request and asks -----------------------------


def test_release_approve_without_a_terminal_refuses_and_describes_the_request(
    client, requester, approver, plan, sent_tasks
):
    client.force_login(requester)  # asked in the admin: a shell approval of it is allowed
    confirm_launch(client, plan, 12, stage=True, typed="PROD")
    waiting = pending(plan)

    with pytest.raises(CommandError) as raised:
        release("approve", "2.8.5", "--step", "12", "--user", "bob", stdin=StringIO("y\n"))

    message = str(raised.value)
    assert raised.value.returncode == 1
    assert approvals.describe_request(waiting) in message
    assert f"request #{waiting.pk}: launch of the stage of step 12 [PROD]" in message
    assert "; confirmed step 13: available sites " in message and "; step 14: " in message
    assert "asked by alice from admin" in message
    assert f"--request {waiting.pk}" in message
    assert step12(plan).state == "pending" and sent_tasks.call_count == 0
    assert pending(plan).pk == waiting.pk
    assert not AuditEvent.objects.filter(action="approve", outcome="ok").exists()


def test_release_approve_shows_the_request_and_approves_it_on_yes(
    client, requester, approver, plan, sent_tasks
):
    client.force_login(requester)
    confirm_launch(client, plan, 12, typed="PROD")
    waiting = pending(plan)

    out, err = release("approve", "2.8.5", "--step", "12", "--user", "bob", stdin=Terminal("y\n"))

    assert f"Approve request #{waiting.pk}? [y/N]" in err
    assert approvals.describe_request(waiting) in err
    assert f"request #{waiting.pk}: launch of step 12 [PROD]" in err
    assert f"approved request #{waiting.pk}: running" in out
    step = step12(plan)
    assert (step.state, step.launched_by_username, step.continue_stage) == ("running", "alice", False)
    assert sent_tasks.call_count == 1
    assert LaunchRequest.objects.get(pk=waiting.pk).state == "approved"
    assert ok_trail(step) == [("launch_request", "alice"), ("approve", "bob"), ("launch", "alice")]


@pytest.mark.parametrize("answer", ["n\n", "\n", "maybe\n"])
def test_release_approve_approves_nothing_unless_told_yes(
    client, requester, approver, plan, sent_tasks, answer
):
    client.force_login(requester)
    confirm_launch(client, plan, 12, typed="PROD")
    waiting = pending(plan)
    err = StringIO()

    with pytest.raises(CommandError, match="not approved"):
        call_command(
            "release", "approve", "2.8.5", "--step", "12", "--user", "bob",
            stdout=StringIO(), stderr=err, stdin=Terminal(answer),
        )  # fmt: skip

    assert f"Approve request #{waiting.pk}? [y/N]" in err.getvalue()
    assert step12(plan).state == "pending" and sent_tasks.call_count == 0
    assert pending(plan).pk == waiting.pk
    assert not AuditEvent.objects.filter(action="approve", outcome="ok").exists()


# -- 3. a withdrawal that lost the race to an approval ---------------------------------------------


def test_withdrawing_a_request_already_approved_is_refused_and_audited(requester, approver, plan, sent_tasks):
    step = step12(plan)
    services.launch(step, requester)
    request = pending(plan)
    approvals.approve(step, approver, request_id=request.pk)

    with pytest.raises(services.ActionRefused, match=f"request #{request.pk} is no longer pending"):
        approvals.withdraw_request(step, requester, request_id=request.pk)

    assert LaunchRequest.objects.get(pk=request.pk).state == "approved"
    assert step12(plan).state == "running" and sent_tasks.call_count == 1
    assert refused("withdraw", "alice") == 1
    assert not AuditEvent.objects.filter(action="withdraw", outcome="ok").exists()


def test_a_withdrawal_overtaken_mid_way_by_the_approval_is_refused_and_audited(
    requester, approver, plan, sent_tasks
):
    """The race itself: alice's withdrawal has read the request as pending when bob's approval
    commits; its conditional update then takes nothing, and it must say so, not record a withdrawal."""
    step = step12(plan)
    services.launch(step, requester)
    request = pending(plan)
    read = approvals.pending_request
    overtaken = []

    def read_then_overtaken(of_step):
        seen = read(of_step)  # still pending here…
        if not overtaken:
            overtaken.append(True)
            approvals.approve(step12(plan), approver, request_id=request.pk)  # …and bob approves now
        return seen

    with patch.object(approvals, "pending_request", side_effect=read_then_overtaken):
        with pytest.raises(services.ActionRefused, match="was approved by bob first: nothing was withdrawn"):
            approvals.withdraw_request(step, requester, request_id=request.pk)

    assert LaunchRequest.objects.get(pk=request.pk).state == "approved"
    assert step12(plan).state == "running" and sent_tasks.call_count == 1
    event = AuditEvent.objects.get(action="withdraw", outcome="refused")
    assert event.username == "alice" and event.parameters["request"] == request.pk
    assert not AuditEvent.objects.filter(action="withdraw", outcome="ok").exists()


# -- 4. resume and retry-failed are requests on a two-person environment ---------------------------


def test_release_resume_is_a_request_another_person_approves(client, requester, approver, plan, sent_tasks):
    step = step12(plan)
    paused(step)

    out, _ = release("resume", "2.8.5", "--user", "alice")

    request = pending(plan)
    assert request is not None and request.action == "resume" and request.requested_by_username == "alice"
    assert f"resume requested (#{request.pk}): another user must approve it" in out
    assert step12(plan).state == "paused" and sent_tasks.call_count == 0

    client.force_login(approver)  # alice asked from the shell: bob approves in the admin
    response = client.post(url("approve", plan, 12), {"request": request.pk})
    assert messages_of(response) == [
        (
            "success",
            "Approved: step 12 is running. Next: wait for step 12 to finish (the plan page updates itself); "
            "then launch stage PROD — steps 13–14.",
        )
    ]
    assert step12(plan).state == "running" and sent_tasks.call_count == 1
    assert LaunchRequest.objects.get(pk=request.pk).state == "approved"
    assert ok_trail(step) == [("resume_request", "alice"), ("approve", "bob"), ("resume", "alice")]


@pytest.mark.parametrize("state", ["failed", "paused"])
def test_release_retry_failed_is_a_request_another_person_approves(
    requester, approver, plan, sent_tasks, state
):
    step = step12(plan)
    paused(step, failed_site=True, state=state)

    out, _ = release("retry-failed", "2.8.5", "--step", "12", "--user", "alice")

    request = pending(plan)
    assert request is not None and request.action == "retry_failed"
    assert f"retry failed sites requested (#{request.pk})" in out
    assert step12(plan).state == state and sent_tasks.call_count == 0
    assert step.sites.get().state == "failed"

    approvals.approve(step, approver, request_id=request.pk)
    assert step12(plan).state == "running" and sent_tasks.call_count == 1
    assert step.sites.get().state == "pending"  # the failed site goes again
    assert ok_trail(step) == [
        ("retry_failed_request", "alice"),
        ("approve", "bob"),
        ("retry_failed", "alice"),
    ]


def test_the_admin_resume_is_a_request_then_a_shell_approval_runs_it(
    client, requester, approver, plan, sent_tasks
):
    step = step12(plan)
    paused(step)
    client.force_login(requester)

    response = client.post(url("resume", plan))

    request = pending(plan)
    assert request is not None and request.action == "resume"
    level, text = messages_of(response)[-1]
    assert level == "warning" and f"The resume of step 12 is requested (#{request.pk})" in text
    assert step12(plan).state == "paused" and sent_tasks.call_count == 0
    assert not AuditEvent.objects.filter(action="resume", outcome="ok").exists()
    # Nor does a second resume by alice (or anyone) slip past the waiting request.
    client.post(url("resume", plan))
    assert step12(plan).state == "paused" and sent_tasks.call_count == 0

    out, _ = release("approve", "2.8.5", "--step", "12", "--request", str(request.pk), "--user", "bob")
    assert f"approved request #{request.pk}: running" in out
    assert step12(plan).state == "running" and sent_tasks.call_count == 1
    assert ok_trail(step) == [("resume_request", "alice"), ("approve", "bob"), ("resume", "alice")]


def test_the_requester_cannot_approve_their_own_resume(client, requester, plan, sent_tasks):
    step = step12(plan)
    paused(step)
    client.force_login(requester)
    client.post(url("resume", plan))
    request = pending(plan)

    response = client.post(url("approve", plan, 12), {"request": request.pk})

    level, text = messages_of(response)[-1]
    assert level == "error" and "another person must approve" in text
    assert step12(plan).state == "paused" and sent_tasks.call_count == 0
    assert refused("approve", "alice") == 1


def test_pause_and_abort_stay_one_persons_brakes_on_prod(requester, plan, sent_tasks):
    """A guard, not a hole: the requests of item 4 must not reach the brakes. (This held before
    0491d88 as well; it is here so the new request path cannot swallow them.)"""
    step = step12(plan)
    running(step)

    out, _ = release("pause", "2.8.5", "--user", "alice")
    assert "pause requested" in out
    assert step12(plan).requested == "pause"

    paused(step)
    out, _ = release("abort", "2.8.5", "--user", "alice")
    assert "aborted" in out
    assert step12(plan).state == "aborted"

    assert not LaunchRequest.objects.exists()
    assert sent_tasks.call_count == 0
    assert ok_trail(step) == [("pause", "alice"), ("abort", "alice")]


# -- 5. channels ----------------------------------------------------------------------------------


def test_audit_rows_name_their_channel_and_the_shells_os_account(client, requester, plan):
    client.force_login(requester)
    confirm_launch(client, plan, 12, typed="PROD")
    admin_row = AuditEvent.objects.get(action="launch_request", outcome="ok")
    assert (admin_row.channel, admin_row.channel_account) == ("admin", "")
    assert (pending(plan).requested_channel, pending(plan).requested_account) == ("admin", "")

    release("status", "2.8.5")  # reads only: no row
    with pytest.raises(CommandError):
        release("launch", "2.8.5", "--step", "12", "--yes", "--user", "alice")  # already waits
    shell_row = AuditEvent.objects.get(action="launch_request", outcome="refused")
    assert (shell_row.channel, shell_row.channel_account) == ("shell", shell_account())
    assert shell_row.channel_account == pwd.getpwuid(os.getuid()).pw_name


def test_a_shell_approval_of_a_shell_request_from_the_same_os_account_is_refused(
    requester, approver, plan, sent_tasks
):
    release("launch", "2.8.5", "--step", "12", "--yes", "--user", "alice")
    request = pending(plan)
    assert (request.requested_channel, request.requested_account) == ("shell", shell_account())

    with pytest.raises(CommandError, match=f"shell account {shell_account()}") as raised:
        release("approve", "2.8.5", "--step", "12", "--request", str(request.pk), "--user", "bob")

    assert "Approve it in the admin" in str(raised.value)
    assert step12(plan).state == "pending" and sent_tasks.call_count == 0
    assert pending(plan).pk == request.pk
    event = AuditEvent.objects.get(action="approve", outcome="refused")
    assert (event.username, event.channel, event.channel_account) == ("bob", "shell", shell_account())
    # Asked and answered at a terminal, it is refused all the same.
    with pytest.raises(CommandError, match="shell account"):
        release("approve", "2.8.5", "--step", "12", "--user", "bob", stdin=Terminal("y\n"))
    assert step12(plan).state == "pending" and refused("approve", "bob") == 2


def test_a_shell_approval_of_an_admin_request_is_allowed(client, requester, approver, plan, sent_tasks):
    client.force_login(requester)
    confirm_launch(client, plan, 12, typed="PROD")
    request = pending(plan)

    out, _ = release("approve", "2.8.5", "--step", "12", "--request", str(request.pk), "--user", "bob")

    assert f"approved request #{request.pk}: running" in out
    assert step12(plan).state == "running" and sent_tasks.call_count == 1
    approval = AuditEvent.objects.get(action="approve", outcome="ok")
    assert (approval.username, approval.channel, approval.channel_account) == (
        "bob",
        "shell",
        shell_account(),
    )
    launch = AuditEvent.objects.get(action="launch", outcome="ok")
    assert (launch.username, launch.channel) == ("alice", "shell")  # run by bob's approval, in the shell


# -- loose ends: nothing waits for an approval that can never run ---------------------------------


def test_release_approve_with_nothing_waiting_says_so(requester, approver, plan):
    with pytest.raises(CommandError, match="step 12 has nothing waiting for approval"):
        release("approve", "2.8.5", "--step", "12", "--user", "bob")
    assert refused("approve", "bob") == 1


@pytest.mark.parametrize("stop", ["abort", "skip"])
def test_aborting_or_skipping_a_step_withdraws_its_pending_request(
    requester, approver, plan, sent_tasks, stop
):
    step = step12(plan)
    paused(step)
    release("resume", "2.8.5", "--user", "alice")
    request = pending(plan)
    assert request is not None and request.action == "resume"

    if stop == "abort":
        release("abort", "2.8.5", "--user", "alice")
    else:
        release("skip", "2.8.5", "--step", "12", "--reason", "done by hand", "--user", "alice")

    request.refresh_from_db()
    assert request.state == "withdrawn" and request.decided_by_username == "alice"
    withdrawal = AuditEvent.objects.get(action="withdraw", outcome="ok", step=step)
    assert f"request #{request.pk}" in withdrawal.message and stop[:4] in withdrawal.message
    with pytest.raises(CommandError, match="no longer pending"):  # it can never run later
        release("approve", "2.8.5", "--step", "12", "--request", str(request.pk), "--user", "bob")
    assert sent_tasks.call_count == 0
