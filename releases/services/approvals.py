"""The two-person rule: on an environment with `two_person` set, a launch, a resume or a retry of
failed sites is requested by one user (`services.request_action`) and approved by another who
holds the protected permission, never the requester. An approval names the request the approver
saw; requests, approvals, withdrawals and their refusals are audited."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from .. import channel as channels
from ..models import AuditEvent, LaunchRequest, StepRun
from .controls import resume_step, retry_failed
from .core import ActionRefused, authorize, permission_refusal, refuse
from .launching import launch
from .rollback import roll_back

__all__ = ["approve", "describe_request", "pending_request", "withdraw_request"]


def pending_request(step: StepRun) -> LaunchRequest | None:
    return step.launch_requests.filter(state=LaunchRequest.State.PENDING).first()


def describe_request(request: LaunchRequest) -> str:
    """One line an approver reads before approving: id, what, the confirmed counts, who, when."""
    counts = ""
    if request.confirmed:
        counts = "; confirmed " + "; ".join(
            f"step {number}: " + (", ".join(f"{name} {n}" for name, n in batches.items()) or "no batches")
            for number, batches in request.confirmed.items()
        )
    elif request.action == LaunchRequest.Action.LAUNCH:
        counts = "; no counts confirmed (launched with --yes)"
    if request.sites:
        paths = list(request.step.sites.filter(pk__in=request.sites[:10]).values_list("path", flat=True))
        more = f" and {len(request.sites) - 10} more" if len(request.sites) > 10 else ""
        counts += f"; {len(request.sites)} sites back on their earlier item: {', '.join(paths)}{more}"
    source = f" from {request.requested_channel}" + (
        f" as {request.requested_account}" if request.requested_account else ""
    )
    return (
        f"request #{request.pk}: {request.what} of step {request.step.number} "
        f"[{request.step.environment}]{counts}; asked by {request.requested_by_username}{source} "
        f"at {timezone.localtime(request.requested_at):%Y-%m-%d %H:%M:%S}"
    )


def approve(step: StepRun, user, *, request_id: int | None) -> StepRun:
    """The second person's approval of the request `request_id` (the one the approver was shown):
    runs it as the requester asked (with the counts the requester confirmed). Refused (and
    audited) when that request is no longer pending, is not this step's, or the approver is the
    requester — by account, or by the shell's operating-system account."""
    params = {"step": step.number, "request": request_id}
    authorize(user, "approve", plan=step.plan, step=step, parameters=params)
    request = _named_request(step, user, request_id, "approve", params)
    if request.requested_by_id == user.pk or request.requested_by_username == user.get_username():
        refuse(f"{user.get_username()} requested this {request.what}: another person must approve it",
               "approve", code="own_request", user=user, step=step, parameters=params)  # fmt: skip
    via = channels.current()
    if via.same_shell_account(request.requested_channel, request.requested_account):
        refuse(
            f"request #{request.pk} was made from the shell account {request.requested_account}, and so is "
            "this approval: the shell cannot tell two people apart there. Approve it in the admin, or "
            "from another operating-system account",
            "approve",
            user=user,
            step=step,
            parameters=params,
        )
    requester = request.requested_by
    try:
        with transaction.atomic():
            taken = LaunchRequest.objects.filter(pk=request.pk, state=LaunchRequest.State.PENDING).update(
                state=LaunchRequest.State.APPROVED,
                decided_by_username=user.get_username(),
                decided_at=timezone.now(),
            )
            if taken != 1 or requester is None:
                raise ActionRefused(f"request #{request.pk} was decided meanwhile, or its requester is gone")
            decided = {**params, "action": request.action, "requested_by": request.requested_by_username}
            decided["stage"] = request.stage
            AuditEvent.record("approve", user=user, step=step, parameters=decided)
            _carry_out(step, request, requester)
    except ActionRefused as exc:
        # Everything above rolled back (the request still waits): record why, once, outside it.
        refuse(f"approved {request.what} refused: {exc}", "approve", user=user, step=step, parameters=params)
    step.refresh_from_db()
    return step


def _carry_out(step: StepRun, request: LaunchRequest, requester) -> None:
    if request.action == LaunchRequest.Action.RESUME:
        resume_step(step, requester, approved=True)
    elif request.action == LaunchRequest.Action.RETRY_FAILED:
        retry_failed(step, requester, approved=True)
    elif request.action == LaunchRequest.Action.ROLLBACK:
        # The requester typed any confirmation the rollback asked for when requesting it.
        roll_back(step, requester, ids=request.sites or [], approved=True, database_confirmed=True)
    else:
        confirmed = {int(n): c for n, c in request.confirmed.items()} if request.confirmed else None
        launch(step, requester, stage=request.stage, via="approve", confirmed=confirmed)


def withdraw_request(step: StepRun, user, *, request_id: int | None = None) -> StepRun:
    """The requester (or anyone who may approve) withdraws a request waiting for approval; one
    that an approval (or another withdrawal) decided first is refused, and audited as refused."""
    params = {"step": step.number, "request": request_id}
    request = _named_request(step, user, request_id, "withdraw", params, required=False)
    params["request"] = request.pk
    if request.requested_by_id != user.pk:  # someone else's request: only an approver withdraws it
        refusal = permission_refusal(user, "approve", step.environment)
        if refusal:
            refuse(f"{refusal}: only the requester or an approver withdraws a request", "withdraw",
                   code="permission_denied", user=user, step=step, parameters=params)  # fmt: skip
    taken = LaunchRequest.objects.filter(pk=request.pk, state=LaunchRequest.State.PENDING).update(
        state=LaunchRequest.State.WITHDRAWN,
        decided_by_username=user.get_username(),
        decided_at=timezone.now(),
    )
    if taken != 1:
        request.refresh_from_db()
        refuse(
            f"request #{request.pk} was {request.state} by {request.decided_by_username} first: "
            "nothing was withdrawn",
            "withdraw",
            user=user,
            step=step,
            parameters=params,
        )
    AuditEvent.record("withdraw", user=user, step=step, parameters={**params, "action": request.action})
    return step


def _named_request(step, user, request_id, action, params, *, required=True) -> LaunchRequest:
    """The pending request of `step` that `request_id` names (refused and audited otherwise)."""
    pending = pending_request(step)
    if pending is None and request_id is None:
        refuse(f"step {step.number} has nothing waiting for approval", action, user=user, step=step,
                parameters=params)  # fmt: skip
    if request_id is None and required:
        refuse(
            "the approval names no request: open the request again and approve what it shows",
            action,
            user=user,
            step=step,
            parameters=params,
        )
    if request_id is None:
        request_id = pending.pk
    if pending is not None and pending.pk == request_id:
        return pending
    named = LaunchRequest.objects.filter(pk=request_id, step=step).first() if request_id else None
    if named is not None:
        why = (
            f"request #{named.pk} is no longer pending (it was {named.state} by {named.decided_by_username})"
        )
    else:
        why = f"step {step.number} has no request #{request_id}"
    if pending is not None:
        why += f"; request #{pending.pk} ({pending.what}, by {pending.requested_by_username}) waits now: look at it first"
    refuse(why, action, user=user, step=step, parameters=params)
