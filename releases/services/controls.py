"""The controls of a launched step: pause (anyone's brake), abort, resume, retry failed sites, skip."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from ..models import AuditEvent, LaunchRequest, ReleasePlan, StepRun, TransitionRefused
from ..states import ACTIVE, StepState
from .core import BrokerUnavailable, authorize, enqueue_step, refuse
from .launching import request_action


def pause(plan: ReleasePlan, user) -> StepRun:
    return _request(plan, user, "pause", [StepState.RUNNING])


def abort(plan: ReleasePlan, user) -> StepRun:
    return _request(plan, user, "abort", list(ACTIVE))


def _request(plan: ReleasePlan, user, action: str, states) -> StepRun:
    step = plan.steps.select_related("environment").filter(state__in=states).order_by("number").first()
    authorize(user, action, plan=plan, step=step)
    if step is None:
        refuse(
            f"release {plan.version} has no {' or '.join(states)} step to {action}",
            action,
            user=user,
            plan=plan,
        )
    try:
        step.request(action)
    except TransitionRefused as exc:
        refuse(str(exc), action, user=user, step=step)
    AuditEvent.record(action, user=user, step=step)
    if action == "abort":
        _close_requests(step, user, "aborted")
    return step


def _close_requests(step: StepRun, user, why: str) -> None:
    """A step that was aborted or skipped leaves nothing waiting for approval: its pending request
    (a resume, a retry, a launch) is withdrawn, audited, so it neither runs later nor blocks a
    relaunch."""
    for request in step.launch_requests.filter(state=LaunchRequest.State.PENDING):
        closed = LaunchRequest.objects.filter(pk=request.pk, state=LaunchRequest.State.PENDING).update(
            state=LaunchRequest.State.WITHDRAWN,
            decided_by_username=user.get_username(),
            decided_at=timezone.now(),
        )
        if closed:
            AuditEvent.record(
                "withdraw",
                user=user,
                step=step,
                parameters={"request": request.pk, "action": request.action},
                message=f"request #{request.pk} ({request.what}) withdrawn: the step was {why}",
            )


def resume(plan: ReleasePlan, user, *, approved: bool = False) -> StepRun:
    step = plan.steps.select_related("environment").filter(state=StepState.PAUSED).order_by("number").first()
    if step is None:
        refuse(f"release {plan.version} has no paused step to resume", "resume", user=user, plan=plan)
    return resume_step(step, user, approved=approved)


def resume_step(step: StepRun, user, *, approved: bool = False) -> StepRun:
    return _resume(step, user, "resume", retry_failed=False, approved=approved)


def retry_failed(step: StepRun, user, *, approved: bool = False) -> StepRun:
    return _resume(step, user, "retry_failed", retry_failed=True, approved=approved)


def _resume(step: StepRun, user, action: str, *, retry_failed: bool, approved: bool) -> StepRun:
    """Resume (or retry the failed sites of) a step. On a two-person environment this is only a
    request, run when another person approves it (`approved`: the approval's own call)."""
    authorize(user, action, step=step)
    if not approved and step.environment is not None and step.environment.two_person:
        return request_action(step, user, action).step
    try:
        with transaction.atomic():
            step.resume(retry_failed=retry_failed)
            AuditEvent.record(action, user=user, step=step)
            enqueue_step(step)
    except TransitionRefused as exc:
        refuse(str(exc), action, user=user, step=step)
    except BrokerUnavailable as exc:
        step.refresh_from_db()
        refuse(f"broker unreachable: {exc}; nothing was resumed", action, user=user, step=step)
    return step


def skip(step: StepRun, user, reason: str) -> StepRun:
    authorize(user, "skip", step=step, parameters={"reason": reason})
    try:
        step.skip(user, reason)
    except TransitionRefused as exc:
        refuse(str(exc), "skip", user=user, step=step, reason=reason)
    AuditEvent.record("skip", user=user, step=step, reason=reason)
    _close_requests(step, user, "skipped")
    return step
