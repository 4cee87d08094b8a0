"""Launching a step or a stage, and the request an operation becomes on a two-person environment."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction

from .. import channel as channels
from .. import launchability, notify, reports
from ..models import AuditEvent, LaunchRequest, StepRun, TransitionRefused
from ..models.plan import ROLLBACK_FROM
from ..states import DONE, StepKind, StepState
from .core import BrokerUnavailable, authorize, enqueue_step, refuse


@dataclass(frozen=True)
class Launched:
    """What a launch did: the step runs (its task is with the broker)."""

    step: StepRun
    request: None = None


@dataclass(frozen=True)
class Requested:
    """What a launch (or a resume, a retry, a rollback) did on a two-person environment: it waits
    for another person's approval of `request`."""

    step: StepRun
    request: LaunchRequest


@dataclass
class PreparedLaunch:
    """What a launch's confirmation shows, computed once (`prepare_launch`)."""

    step: StepRun
    stage: bool
    refusal: str  # why the launch cannot happen now ('' when it can)
    radius: dict | None  # everything it may reach, read from Atlas (None when not read)

    @property
    def steps(self) -> list[StepRun]:
        """The steps the launch reaches: the step, or the stage's steps not yet done."""
        return [s for s in self.step.stage_chain() if s.state not in DONE] if self.stage else [self.step]

    @property
    def confirmed(self) -> dict | None:
        return self.radius["confirmed"] if self.radius is not None else None

    def preview(self) -> dict:
        """The blast radius, read from Atlas now if it was not yet (one credentials probe per
        environment)."""
        if self.radius is None:
            self.radius = reports.blast_radius(self.step, stage=self.stage)
        return self.radius


def prepare_launch(
    step: StepRun, user, *, stage: bool = False, via: str = "admin", strict: bool = False, read_atlas=None
) -> PreparedLaunch:
    """Everything before a launch, once, for the admin's confirmation, `release launch` and the
    HTTP API alike: the user's permission (refused and audited), whether the launch can happen now
    (the one check, `launchability`; with `strict` a refusal is audited and raised before Atlas is
    read), and the blast radius read from Atlas (by default only when the launch can happen)."""
    params = {"step": step.number, "stage": stage, "via": via}
    authorize(user, "launch", plan=step.plan, step=step, parameters=params)
    refusal = launchability.launch_refusal(step)
    if refusal and strict:
        refuse(refusal, "launch", user=user, step=step, parameters=params)
    prepared = PreparedLaunch(step, stage, refusal, None)
    if (not refusal) if read_atlas is None else read_atlas:
        prepared.preview()
    return prepared


def launch(
    step: StepRun, user, *, stage: bool = False, via: str = "launch", confirmed: dict | None = None
) -> Launched | Requested:
    """Launch a step (and, with `stage`, the environment's following steps as each succeeds);
    return what happened: `Launched`, or `Requested` on a two-person environment.

    `confirmed` is what the operator saw and confirmed, `{step number: {batch name: sites}}`:
    it goes into the audit event, and a site step whose snapshot finds more sites in a batch than
    confirmed pauses before its first write. Launching and enqueueing are one decision: if the
    broker does not take the task, nothing is launched (the step stays as it was).
    """
    params = {"step": step.number, "stage": stage, "via": via}
    if confirmed:
        params["confirmed"] = {str(number): counts for number, counts in confirmed.items()}
    authorize(user, "launch", plan=step.plan, step=step, parameters=params)
    refusal = _selector_refusal(step)
    if refusal:
        refuse(refusal, "launch", user=user, step=step, parameters=params)
    if via == "launch" and step.environment is not None and step.environment.two_person:
        return request_action(step, user, "launch", stage=stage, confirmed=confirmed)  # run on approval
    try:
        with transaction.atomic():
            step.launch(user, continue_stage=stage)
            if confirmed is not None:
                _record_confirmed(step, confirmed, stage=stage)
            elif via != "stage":
                # Launched without a confirmation (`--yes`): an earlier launch's counts are not this one's.
                StepRun.objects.filter(pk=step.pk).update(confirmed_targets=None)
                step.confirmed_targets = None
            AuditEvent.record("launch", user=user, step=step, parameters=params)
            enqueue_step(step, strict=via != "stage")
    except TransitionRefused as exc:
        refuse(str(exc), "launch", user=user, step=step, parameters=params)
    except BrokerUnavailable as exc:
        step.refresh_from_db()
        refuse(
            f"broker unreachable: {exc}; nothing was launched",
            "launch",
            user=user,
            step=step,
            parameters=params,
        )
    return Launched(step)


def request_action(
    step: StepRun,
    user,
    action: str = "launch",
    *,
    stage: bool = False,
    confirmed: dict | None = None,
    sites: list[int] | None = None,
) -> Requested:
    """The first half of an operation under the two-person rule (a launch, a resume, a retry of
    failed sites, a rollback): recorded and audited; nothing runs until another user with the protected
    permission approves that very request (`approvals.approve`)."""
    audit_action = f"{action}_request"
    params = {"step": step.number, "stage": stage}
    if confirmed:
        params["confirmed"] = {str(number): counts for number, counts in confirmed.items()}
    if sites is not None:
        params["sites"] = len(sites)
    refusal = action_refusal(step, action)
    if refusal:
        refuse(refusal, audit_action, user=user, step=step, parameters=params)
    waiting = f"step {step.number} already waits for an approval"
    if step.launch_requests.filter(state=LaunchRequest.State.PENDING).exists():
        refuse(waiting, audit_action, user=user, step=step, parameters=params)
    try:
        with transaction.atomic():
            request = _record_request(step, user, action, stage=stage, sites=sites, params=params)
    except IntegrityError:  # another request got there first (one pending request per step)
        refuse(waiting, audit_action, user=user, step=step, parameters=params)
    # The approvers learn that a request waits (outside the transaction: an HTTP post).
    notify.step_event(
        step,
        f"{request.what} requested by {request.requested_by_username} (request #{request.pk}): "
        f"{step.environment} requires two people, waiting for another PROD release manager's approval",
    )
    return Requested(step, request)


def _record_request(step: StepRun, user, action: str, *, stage: bool, sites, params: dict) -> LaunchRequest:
    via = channels.current()
    request = LaunchRequest.objects.create(
        step=step,
        action=action,
        stage=stage,
        confirmed=params.get("confirmed"),
        sites=sites,
        requested_by=user,
        requested_by_username=user.get_username(),
        requested_channel=via.name,
        requested_account=via.account,
    )
    AuditEvent.record(
        f"{action}_request",
        user=user,
        step=step,
        parameters={**params, "request": request.pk},
        message=f"{step.environment} requires two people: waiting for another user's approval",
    )
    return request


def request_launch(step: StepRun, user, *, stage: bool = False, confirmed: dict | None = None) -> Requested:
    return request_action(step, user, "launch", stage=stage, confirmed=confirmed)


def action_refusal(step: StepRun, action: str = "launch") -> str:
    """Why `action` on `step` would be refused now ('' if it would not): asked before recording a
    request, so a request that could never run is not left waiting for an approver."""
    if action == "resume":
        return (
            "" if step.state == StepState.PAUSED else f"step {step.number} is not paused (it is {step.state})"
        )
    if action == "retry_failed":
        if step.state not in (StepState.PAUSED, StepState.FAILED):
            return f"step {step.number} is neither paused nor failed (it is {step.state})"
        return ""
    if action == "rollback":
        return (
            ""
            if step.state in ROLLBACK_FROM
            else f"step {step.number} cannot roll back sites now (it is {step.state})"
        )
    return _launch_refusal(step)


def _launch_refusal(step: StepRun) -> str:
    """Why a launch would be refused now ('' if it would not): `launchability.launch_check`, the
    one check the plan page, the confirmation page and `release launch` ask too."""
    return launchability.launch_refusal(step)


def check_launch(step: StepRun, user, *, parameters=None) -> None:
    """Refuse (and audit) a launch that cannot happen now, before the operator is asked anything
    or Atlas is read: the confirmation's POST and `release launch` call it first."""
    refusal = _launch_refusal(step)
    if refusal:
        refuse(refusal, "launch", user=user, step=step, parameters=parameters)


_selector_refusal = launchability.selector_refusal


def _record_confirmed(step: StepRun, confirmed: dict, *, stage: bool) -> None:
    """Keep each reached step's confirmed counts on the step itself (the engine compares). A site
    step the launch reaches but the confirmation does not show (its preview failed) confirmed no
    batch: each of its batches pauses it before its first write."""
    reached = step.stage_chain() if stage else [step]
    confirmed = dict(confirmed)
    for other in reached:
        if other.kind in (StepKind.DELETE_SITES, StepKind.UPDATE_SITES) and other.state not in DONE:
            if other.number not in confirmed and str(other.number) not in confirmed:
                confirmed[other.number] = {}
    for number, counts in confirmed.items():
        step.plan.steps.filter(number=int(number)).exclude(state__in=DONE).update(confirmed_targets=counts)
    if step.number in confirmed or str(step.number) in confirmed:
        step.confirmed_targets = confirmed.get(step.number, confirmed.get(str(step.number)))
