"""The two-person rule: on an environment with `two_person` set, a launch is requested by one user
(`services.launch` records a request instead of running it: `services.request_launch`) and approved by another who holds the
protected permission, never the requester. Requests, approvals and refusals are audited."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from .models import AuditEvent, LaunchRequest, StepRun
from .services import ActionRefused, _refuse, authorize, launch, request_launch

__all__ = ["approve", "pending_request", "request_launch", "withdraw_request"]


def pending_request(step: StepRun) -> LaunchRequest | None:
    return step.launch_requests.filter(state=LaunchRequest.State.PENDING).first()


def approve(step: StepRun, user) -> StepRun:
    """The second person's approval: launches the requested step (as the requester asked, with
    the counts the requester confirmed). Never the requester; audited, refusals too."""
    authorize(user, "approve", plan=step.plan, step=step, parameters={"step": step.number})
    request = pending_request(step)
    if request is None:
        _refuse(f"step {step.number} has no launch waiting for approval", "approve", user=user, step=step)
    if request.requested_by_id == user.pk or request.requested_by_username == user.get_username():
        _refuse(
            f"{user.get_username()} requested this launch: another person must approve it",
            "approve",
            user=user,
            step=step,
        )
    requester = request.requested_by
    confirmed = {int(n): c for n, c in request.confirmed.items()} if request.confirmed else None
    try:
        with transaction.atomic():
            taken = LaunchRequest.objects.filter(pk=request.pk, state=LaunchRequest.State.PENDING).update(
                state=LaunchRequest.State.APPROVED,
                decided_by_username=user.get_username(),
                decided_at=timezone.now(),
            )
            if taken != 1 or requester is None:
                raise ActionRefused("the request was decided meanwhile, or its requester is gone")
            AuditEvent.record(
                "approve",
                user=user,
                step=step,
                parameters={"requested_by": request.requested_by_username, "stage": request.stage},
            )
            launch(step, requester, stage=request.stage, via="approve", confirmed=confirmed)
    except ActionRefused as exc:
        # Everything above rolled back (the request still waits): record why, once, outside it.
        _refuse(f"approved launch refused: {exc}", "approve", user=user, step=step)
    step.refresh_from_db()
    return step


def withdraw_request(step: StepRun, user) -> StepRun:
    """The requester (or anyone who may approve) withdraws a launch waiting for approval."""
    request = pending_request(step)
    if request is None:
        _refuse(f"step {step.number} has no launch waiting for approval", "withdraw", user=user, step=step)
    if request.requested_by_id != user.pk:
        authorize(user, "approve", plan=step.plan, step=step)
    LaunchRequest.objects.filter(pk=request.pk, state=LaunchRequest.State.PENDING).update(
        state=LaunchRequest.State.WITHDRAWN,
        decided_by_username=user.get_username(),
        decided_at=timezone.now(),
    )
    AuditEvent.record("withdraw", user=user, step=step)
    return step
