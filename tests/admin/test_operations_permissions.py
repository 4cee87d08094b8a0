"""Issue 17, item 3, "Permissions follow the environment": every plan-page control, POSTed by
every role, on a DEV step and on a PROD step, against the decided policy.

- viewer: every control refused.
- release-manager: on DEV every control but approve; on PROD only pause (the emergency brake any
  release manager may pull, audited); finalize (no environment's step); never approve.
- prod-manager: every control on DEV and PROD (approve: a request another user made).

Each row puts its step into the state the control needs directly in the database (no engine, no
worker, no Atlas: `send_task` is replaced) and judges the outcome from the database: an allowed
control changed the step (or request, or plan) as it does and left an "ok" audit event; a refused
one changed nothing and left a "refused" audit event for that user. A last table checks that the
plan page and its live fragment offer exactly the allowed controls.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from releases import roles, services
from releases.admin import launching
from releases.models import (
    AuditEvent,
    Environment,
    LaunchRequest,
    ReleasePlan,
    SiteResult,
    StepRun,
    UpdateGroup,
)
from releases.services import confirmations
from tests.admin_helpers import mark_done, url
from tests.support import R, T, member

# Nothing is enqueued: `send_task` is replaced for every test (`sent_tasks`), so tests count it.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]

ROLES = {
    "viewer": roles.VIEWERS,
    "release-manager": roles.RELEASE_MANAGERS,
    "prod-manager": roles.PROD_RELEASE_MANAGERS,
}
STEP = {"DEV": 4, "PROD": 14}  # a site step of each environment (update_sites)
FINALIZE_STEP = 7
CONTROLS = ("launch", "approve", "withdraw", "pause", "resume", "abort", "retry", "skip", "finalize")
# The audit action an allowed control records, and those its refusal may be recorded under
# (a withdrawal of someone else's request needs an approver: the requester or an approver withdraws).
OK_ACTION = {control: control for control in CONTROLS} | {"retry": "retry_failed"}
REFUSED_ACTIONS = {control: {OK_ACTION[control]} for control in CONTROLS}
REASON = "done by hand"

RM, PM = "release-manager", "prod-manager"
# fmt: off
# The decided policy (README, "Who can do what"): who may use each control on a DEV step and on a
# PROD step. The viewer may use none.
POLICY = {
    # control     DEV        PROD
    "launch":   ({RM, PM}, {PM}),
    "approve":  ({PM},     {PM}),      # a request another user made; never a release-manager
    "withdraw": ({PM},     {PM}),      # another user's request: only an approver (the requester's own is not tested)
    "pause":    ({RM, PM}, {RM, PM}),  # the emergency brake any release manager may pull, audited
    "resume":   ({RM, PM}, {PM}),
    "abort":    ({RM, PM}, {PM}),
    "retry":    ({RM, PM}, {PM}),
    "skip":     ({RM, PM}, {PM}),
    "finalize": ({RM, PM}, None),      # not an environment's step: one row per role
}
# fmt: on


def allowed(role: str, control: str, env: str | None) -> bool:
    dev, prod = POLICY[control]
    return role in (prod if env == "PROD" else dev)


def _rows():
    for role in ROLES:
        for control in CONTROLS:
            for env in (None,) if control == "finalize" else ("DEV", "PROD"):
                name = f"{role}-{control}" + (f"-{env}" if env else "")
                yield pytest.param(role, control, env, id=name)


@pytest.fixture
def lead(runbook):
    """The plan's creator and, under the two-person rule, the requester: another prod-manager."""
    return member("prod-lead", "prod-manager", password=None)


@pytest.fixture
def plan(lead):
    return services.create_plan("2.8.5", commit=R, user=lead)


# -- putting a step into the state a control needs -----------------------------------------------


def running(step: StepRun) -> None:
    """Running, held by a live worker (so an abort is a request, not an immediate abort)."""
    now = timezone.now()
    StepRun.objects.filter(pk=step.pk).update(
        state="running",
        started_at=now,
        launched_by_username="prod-lead",
        lease_owner="worker-1",
        lease_expires_at=now + timedelta(minutes=10),
    )


def paused_with_a_failed_site(step: StepRun) -> SiteResult:
    StepRun.objects.filter(pk=step.pk).update(
        state="paused", started_at=timezone.now(), message="failure threshold reached"
    )
    return SiteResult.objects.create(
        step=step, site_id="f" * 24, path="broken", state="failed", message="500"
    )


def requested(step: StepRun, requester) -> LaunchRequest:
    """A launch waiting for approval on a two-person environment, requested by `requester`."""
    Environment.objects.filter(pk=step.environment_id).update(two_person=True)
    return LaunchRequest.objects.create(
        step=step, requested_by=requester, requested_by_username=requester.get_username()
    )


def prepare(plan, lead, control: str, env: str | None) -> StepRun:
    if control == "finalize":
        mark_done(plan, *range(2, FINALIZE_STEP))
        return plan.steps.get(number=FINALIZE_STEP)
    number = STEP[env]
    mark_done(plan, *range(2, number))
    step = plan.steps.select_related("environment").get(number=number)
    if control in ("pause", "abort"):
        running(step)
    elif control in ("resume", "retry"):
        paused_with_a_failed_site(step)
    elif control in ("approve", "withdraw"):
        requested(step, lead)
    # launch, skip: the step stays pending with every earlier step succeeded.
    return step


def confirmation(plan, step: StepRun, user) -> str:
    """The signed form field the launch confirmation page gives `user` for this step (the sites per
    batch shown), made here so that no Atlas is read: the page itself is refused to some rows."""
    groups = UpdateGroup.objects.filter(environment=step.environment, step_number=step.number, enabled=True)
    counts = {step.number: {g.name: 3 for g in groups}}
    return confirmations.sign_launch(step, False, user, counts, salt=launching.SALT)


def post(client, user, plan, step: StepRun, control: str, env: str | None):
    n = step.number
    if control == "launch":
        data = {"confirmed": confirmation(plan, step, user)}
        if env == "PROD":
            data["confirm_environment"] = "PROD"
        return client.post(url("launch", plan, n), data)
    if control in ("pause", "resume", "abort"):
        return client.post(url(control, plan))
    if control == "skip":
        return client.post(url("skip", plan, n), {"reason": REASON})
    if control == "finalize":
        return client.post(url("finalize", plan), {"tag": "2.8.5", "commit": T})
    if control in ("approve", "withdraw"):  # the form names the request it showed
        return client.post(url(control, plan, n), {"request": step.launch_requests.get().pk})
    return client.post(url("retry", plan, n))


def snapshot(plan) -> dict:
    """Everything a control could change."""
    return {
        "steps": list(
            plan.steps.order_by("number").values_list(
                "number", "state", "requested", "message", "launched_by_username", "continue_stage"
            )
        ),
        "sites": list(SiteResult.objects.filter(step__plan=plan).order_by("pk").values_list("pk", "state")),
        "requests": list(
            LaunchRequest.objects.filter(step__plan=plan)
            .order_by("pk")
            .values_list("pk", "state", "decided_by_username")
        ),
        "plan": ReleasePlan.objects.values_list("final_tag", "final_commit").get(pk=plan.pk),
    }


def assert_carried_out(control: str, plan, step: StepRun, sent_tasks) -> None:
    step.refresh_from_db()
    request = LaunchRequest.objects.filter(step=step).first()
    if control == "launch":
        assert step.state == "running" and sent_tasks.call_count == 1
    elif control == "approve":
        assert request.state == "approved" and step.state == "running" and sent_tasks.call_count == 1
    elif control == "withdraw":
        assert request.state == "withdrawn" and step.state == "pending"
    elif control == "pause":
        assert (step.state, step.requested) == ("running", "pause")
    elif control == "abort":
        assert step.requested == "abort" or step.state == "aborted"
    elif control == "resume":
        assert step.state == "running" and sent_tasks.call_count == 1
    elif control == "retry":
        assert step.state == "running" and sent_tasks.call_count == 1
        assert list(step.sites.values_list("state", flat=True)) == ["pending"]
    elif control == "skip":
        assert (step.state, step.message) == ("skipped", REASON)
    elif control == "finalize":
        plan.refresh_from_db()
        assert (plan.final_tag, plan.final_commit, step.state) == ("2.8.5", T, "succeeded")


@pytest.mark.parametrize(("role", "control", "env"), list(_rows()))
def test_every_control_follows_the_environment(client, lead, plan, sent_tasks, role, control, env):
    user = member(role, role, password=None)
    step = prepare(plan, lead, control, env)
    before = snapshot(plan)
    client.force_login(user)

    response = post(client, user, plan, step, control, env)

    events = AuditEvent.objects.filter(username=role)
    if allowed(role, control, env):
        assert response.status_code == 302, response.status_code
        assert_carried_out(control, plan, step, sent_tasks)
        assert events.filter(action=OK_ACTION[control], outcome="ok").exists()
        assert not events.filter(outcome="refused").exists()
    else:
        assert response.status_code in (302, 403), response.status_code
        assert snapshot(plan) == before, f"{role} changed something with {control}"
        assert sent_tasks.call_count == 0
        assert not events.filter(outcome="ok").exists()
        refused = set(events.filter(outcome="refused").values_list("action", flat=True))
        assert refused & REFUSED_ACTIONS[control], f"no refusal of {control} audited for {role}: {refused}"


# -- the plan page offers exactly the allowed controls ---------------------------------------------

# What a step in each of these states offers to someone allowed everything (a running PROD step:
# Pause and Abort… to a prod-manager, Pause alone to a release-manager, nothing to a viewer).
OFFERED = {
    "running": {"pause", "abort"},
    "paused": {"resume", "abort", "retry", "skip"},
    "pending": {"launch", "skip"},
    "requested": {"approve", "withdraw", "skip"},  # pending, a launch waiting for approval
    "finalize": {"finalize"},  # step 7, every earlier step done
}
PREPARED_AS = {
    "running": "pause",
    "paused": "resume",
    "pending": "launch",
    "requested": "approve",
    "finalize": "finalize",
}
_CONTROL_URL = re.compile(r'(?:href|action)="[^"]*/releaseplan/[^/"]+/(?:step/\d+/)?(\w+)/(?:\?[^"]*)?"')


def offered(html: str, number: int) -> set[str]:
    """The controls in step `number`'s operations cell (links and forms, by their URL)."""
    row = html.split(f'id="step-{number}"', 1)[1]
    ops = row.split('data-live-part="ops">', 1)[1].split("</div>", 1)[0]
    return {name for name in _CONTROL_URL.findall(ops) if name in CONTROLS}


def _page_rows():
    for role in ROLES:
        for env in ("DEV", "PROD"):
            for state in ("running", "paused", "pending", "requested"):
                yield pytest.param(role, env, state, id=f"{role}-{state}-{env}")
        yield pytest.param(role, None, "finalize", id=f"{role}-finalize")


@pytest.mark.parametrize(("role", "env", "state"), list(_page_rows()))
def test_the_plan_page_offers_exactly_the_allowed_controls(client, lead, plan, role, env, state):
    step = prepare(plan, lead, PREPARED_AS[state], env)
    expected = {control for control in OFFERED[state] if allowed(role, control, env)}
    client.force_login(member(role, role, password=None))

    for name in ("change", "live"):
        response = client.get(url(name, plan))
        assert response.status_code == 200, (name, response.status_code)
        assert offered(response.content.decode(), step.number) == expected, name
