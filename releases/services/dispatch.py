"""The worker's end of a step: recording how it ended and, for a stage, launching the next step."""

from __future__ import annotations

from django.db import transaction

from .. import notify
from ..models import (
    AuditEvent,
    StepRun,
)
from ..states import CANARY_WAITING, DONE, MANUAL_KINDS, StepState
from .core import (
    ActionRefused,
)
from .launching import launch


def continue_stage(step: StepRun) -> StepRun | None:
    """After a stage step succeeds: launch the environment's next step, unless it is a gate."""
    later = (
        step.plan.steps.select_related("environment").filter(number__gt=step.number).exclude(state__in=DONE)
    )
    following = later.order_by("number").first()
    if following is None or following.environment_id != step.environment_id or following.kind in MANUAL_KINDS:
        return None
    user = step.launched_by
    if user is None:
        return None
    try:
        return launch(following, user, stage=True, via="stage").step
    except ActionRefused:
        return None


def complete_step(step: StepRun, owner: str, outcome) -> str | None:
    """The worker's end of a step: record how it ended (audited) and, for a stage step that
    succeeded, launch the environment's next step in the same transaction, so an observer never
    sees the stage idle between two of its steps. Returns the end state, or None if this worker
    no longer held the step."""
    with transaction.atomic():
        if not step.finish(owner, outcome.state, outcome.message, outcome.result or None):
            return None
        AuditEvent.record(
            f"step_{step.state}",
            username="system",
            step=step,
            parameters={"owner": owner, "counts": step.counts()},
            message=step.message,
        )
        if step.state == StepState.SUCCEEDED and step.continue_stage:
            continue_stage(step)
    canary = step.state == StepState.PAUSED and (step.result or {}).get("canary") == CANARY_WAITING
    notify.step_event(step, "paused: the canary batch is verified, waiting for an operator to continue" if canary
                      else step.state)  # fmt: skip
    return step.state
