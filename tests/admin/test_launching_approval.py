"""The two-person rule: requested by one user, approved by another with the protected permission."""

import threading
import time
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from releases import channel as channels
from releases import roles, services
from releases.models import AuditEvent, Environment, LaunchRequest, StepRun
from releases.services import approvals
from tests.admin_helpers import confirm_launch, mark_done, url
from tests.support import R, configure_environments, member

# Nothing is enqueued: `send_task` is replaced for every test (`sent_tasks`), so tests count it.
pytestmark = pytest.mark.usefixtures("sent_tasks")


@pytest.fixture
def requester(runbook):
    return member("alice")


@pytest.fixture
def approver(requester):
    return member("bob")


@pytest.fixture
def plan(requester, simulator):
    configure_environments({"PROD": simulator.of("PROD", sites=60)})
    call_command("environment", "set", "PROD", "--two-person", "--user", "alice", stdout=StringIO())
    plan = services.create_plan("2.8.5", commit=R, user=requester)
    mark_done(plan, *range(2, 12))
    return plan


@pytest.mark.django_db
def test_the_rule_is_off_by_default_and_set_by_the_command_audited(requester, plan):
    assert Environment._meta.get_field("two_person").default is False
    assert Environment.objects.get(name="PROD").two_person
    assert not Environment.objects.get(name="DEV").two_person
    event = AuditEvent.objects.get(action="environment_set", outcome="ok")
    assert event.parameters == {"two_person": [False, True]} and event.username == "alice"


@pytest.mark.django_db
def test_changing_the_rule_needs_the_protected_permission(requester, plan):
    carol = member("carol", roles.RELEASE_MANAGERS)
    carol.user_permissions.add(Permission.objects.get(codename="change_environment"))
    with pytest.raises(CommandError, match="ask a PROD release manager"):
        call_command("environment", "set", "TEST", "--two-person", "--user", "carol", stdout=StringIO())
    assert not Environment.objects.get(name="TEST").two_person


@pytest.mark.django_db
def test_a_launch_is_only_requested_then_another_user_approves_it(
    client, requester, approver, plan, sent_tasks
):
    client.force_login(requester)
    page, response = confirm_launch(client, plan, 12, stage=True, typed="PROD")
    assert "request the launch of step 12" in page.content.decode()
    step = StepRun.objects.get(plan=plan, number=12)
    assert step.state == "pending" and sent_tasks.call_count == 0
    request = LaunchRequest.objects.get(step=step, state="pending")
    assert request.requested_by_username == "alice" and request.stage
    html = client.get(url("change", plan)).content.decode()
    assert f"launch of the stage waiting for approval (request #{request.pk} by alice)" in html
    assert url("approve", plan, 12) not in html  # never the requester

    client.force_login(approver)
    assert url("approve", plan, 12) in client.get(url("change", plan)).content.decode()
    page = client.get(url("approve", plan, 12))
    assert 'value="Yes, approve the launch of the stage of step 12"' in page.content.decode()
    assert f'name="request" value="{request.pk}"' in page.content.decode()
    client.post(url("approve", plan, 12), {"request": request.pk})
    step.refresh_from_db()
    assert (step.state, step.launched_by_username, step.continue_stage) == ("running", "alice", True)
    assert sent_tasks.call_count == 1
    actions = list(
        AuditEvent.objects.filter(step=step, outcome="ok").order_by("id").values_list("action", "username")
    )
    assert actions == [("launch_request", "alice"), ("approve", "bob"), ("launch", "alice")]
    confirmed = page.context["launch_request"].confirmed
    assert StepRun.objects.get(plan=plan, number=13).confirmed_targets == confirmed["13"]


@pytest.mark.django_db
def test_the_requester_cannot_approve_their_own_launch(requester, plan):
    step = services.get_step(plan, 12)
    services.launch(step, requester)
    request = approvals.pending_request(step)
    with pytest.raises(services.ActionRefused, match="another person must approve"):
        approvals.approve(step, requester, request_id=request.pk)
    assert StepRun.objects.get(pk=step.pk).state == "pending"
    assert AuditEvent.objects.filter(action="approve", outcome="refused", username="alice").count() == 1


@pytest.mark.django_db
def test_a_user_without_the_protected_permission_gets_a_refusal_page(client, requester, plan):
    services.launch(services.get_step(plan, 12), requester)
    manager = member("carol", roles.RELEASE_MANAGERS)
    client.force_login(manager)
    response = client.get(url("approve", plan, 12))
    assert response.status_code == 403 and "ask a PROD release manager" in response.content.decode()
    assert client.post(url("approve", plan, 12)).status_code == 403
    assert StepRun.objects.get(plan=plan, number=12).state == "pending"


@pytest.mark.django_db
def test_release_approve_command_launches_and_refuses_the_requester(requester, approver, plan):
    with channels.acting_through(channels.ADMIN):  # alice asked in the browser
        services.launch(services.get_step(plan, 12), requester)
    request = LaunchRequest.objects.get(step__plan=plan, step__number=12, state="pending")
    with pytest.raises(CommandError, match="another person"):
        call_command(
            "release", "approve", "2.8.5", "--step", "12", "--request", str(request.pk), "--user", "alice",
            stdout=StringIO(),
        )  # fmt: skip
    out = StringIO()
    call_command(
        "release", "approve", "2.8.5", "--step", "12", "--request", str(request.pk), "--user", "bob",
        stdout=out,
    )  # fmt: skip
    assert f"approved request #{request.pk}: running" in out.getvalue()
    assert StepRun.objects.get(plan=plan, number=12).state == "running"


@pytest.mark.django_db(transaction=True)
def test_launch_wait_waits_through_the_approval(requester, approver, plan):
    step = services.get_step(plan, 12)

    def approve_later():
        try:
            deadline = time.monotonic() + 20
            while not LaunchRequest.objects.filter(step=step, state="pending").exists():
                assert time.monotonic() < deadline
                time.sleep(0.1)
            approvals.approve(step, approver, request_id=approvals.pending_request(step).pk)
        finally:
            connection.close()  # this thread's own connection: the test database is dropped later

    thread = threading.Thread(target=approve_later)
    thread.start()
    err = StringIO()
    with pytest.raises(CommandError) as raised:  # no worker here: the step stays running until --timeout
        call_command(
            "release", "launch", "2.8.5", "--step", "12", "--yes", "--wait", "--timeout", "4",
            "--user", "alice", stdout=StringIO(), stderr=err,
        )  # fmt: skip
    thread.join()
    assert "waiting for another user to approve" in err.getvalue()
    assert "approved by bob" in err.getvalue()
    assert "still running" in str(raised.value)
    assert StepRun.objects.get(pk=step.pk).state == "running"


@pytest.mark.django_db
def test_the_environment_page_sets_the_rule_through_the_audited_service(client, requester, plan):
    from django.urls import reverse

    from releases.admin.environments import EnvironmentForm

    env = Environment.objects.get(name="TEST")
    manager = member("carol", roles.RELEASE_MANAGERS)
    manager.user_permissions.add(Permission.objects.get(codename="change_environment"))
    for user, allowed in ((type(manager).objects.get(pk=manager.pk), False), (requester, True)):
        form_class = type(
            "F",
            (EnvironmentForm,),
            {"user": user, "Meta": type("Meta", (), {"model": Environment, "fields": "__all__"})},
        )
        data = {
            **{f: v for f, v in form_class(instance=env).initial.items() if v is not None},
            "two_person": True,
        }
        client.force_login(user)
        client.post(reverse("admin:releases_environment_change", args=[env.pk]), data)
        assert Environment.objects.get(pk=env.pk).two_person is allowed
    outcomes = list(
        AuditEvent.objects.filter(action="environment_set", environment_name="TEST").values_list(
            "outcome", flat=True
        )
    )
    assert sorted(outcomes) == ["ok", "refused"]


@pytest.mark.django_db
def test_launch_wait_gives_up_at_its_timeout_leaving_the_request_open(requester, plan):
    with pytest.raises(CommandError, match="waiting for the approval of step 12") as raised:
        call_command(
            "release", "launch", "2.8.5", "--step", "12", "--yes", "--wait", "--timeout", "1",
            "--user", "alice", stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
    assert raised.value.returncode == 3
    assert LaunchRequest.objects.filter(step__number=12, state="pending").count() == 1


@pytest.mark.django_db
def test_a_second_request_for_the_same_step_is_refused_and_audited(requester, approver, plan):
    step = services.get_step(plan, 12)
    services.launch(step, requester)
    with pytest.raises(services.ActionRefused, match="already waits for an approval"):
        services.launch(step, approver)
    assert LaunchRequest.objects.filter(step=step).count() == 1
    assert AuditEvent.objects.filter(action="launch_request", outcome="refused", username="bob").count() == 1
