"""The step engine: what each step kind does against Atlas, run by a worker holding the step's lease."""

from __future__ import annotations

import logging

from django.db import transaction

from atlas.errors import AtlasError

from ..models import AuditEvent, EnvironmentMisconfigured, StepRun
from ..states import StepKind, StepState
from .code import deploy_code, update_code
from .context import LeaseLost, Outcome, StepContext
from .sites import delete_sites, update_sites

logger = logging.getLogger(__name__)

KINDS = {
    StepKind.DEPLOY_CODE: deploy_code,
    StepKind.UPDATE_CODE: update_code,
    StepKind.DELETE_SITES: delete_sites,
    StepKind.UPDATE_SITES: update_sites,
}


def execute(step_id: int, owner: str) -> str | None:
    """Run (or resume) one step if it is running and nobody else holds it. Returns the end state."""
    step = StepRun.objects.select_related("plan", "environment").filter(pk=step_id).first()
    if step is None or step.state != StepState.RUNNING or not step.claim(owner):
        return None
    try:
        outcome = _run(step, owner)
    except LeaseLost:
        logger.warning("step %s: lease lost, another worker continues it", step_id)
        return None
    from .. import notify, services  # the engine reports back; services also enqueue steps

    # Finishing and launching the stage's next step commit together: an observer never sees
    # the stage idle between two of its steps.
    with transaction.atomic():
        if not step.finish(owner, outcome.state, outcome.message, outcome.result or None):
            return None
        AuditEvent.record(
            f"step_{outcome.state}",
            username="system",
            step=step,
            parameters={"owner": owner, "counts": step.counts()},
            message=outcome.message,
        )
        if outcome.state == StepState.SUCCEEDED and step.continue_stage:
            services.continue_stage(step)
    notify.step_event(step, outcome.state)
    return outcome.state


def _run(step: StepRun, owner: str) -> Outcome:
    try:
        ctx = StepContext(step, owner)
        requested = ctx.beat(force=True)
        if requested:
            return Outcome.stopped(requested)
        return KINDS[step.kind](ctx)
    except EnvironmentMisconfigured as exc:
        return Outcome(StepState.FAILED, str(exc))
    except AtlasError as exc:
        # Retries are exhausted or retrying cannot help: the operator decides what next.
        state = StepState.PAUSED if exc.retryable else StepState.FAILED
        return Outcome(
            state, f"Atlas error: {exc}", {**step.result, "error": {"status": exc.status, "body": exc.body}}
        )
