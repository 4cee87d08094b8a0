"""The step engine: what each step kind does against Atlas, run by a worker holding the step's lease.

`execute` runs a step and returns how it ended; it never finishes the step itself or decides what
runs next: `releases.services.complete_step` does that (the engine does not import services).
"""

from __future__ import annotations

import logging
import time

from django.db import close_old_connections, connection

from atlas.errors import AtlasError, AuthenticationError, Cancelled, Unavailable

from ..db import with_database
from ..models import EnvironmentMisconfigured, StepRun
from ..states import StepKind, StepState
from .code import deploy_code, update_code
from .context import LeaseLost, Outcome, StepContext, credentials_refused, unreachable
from .rollback import roll_back
from .sites import delete_sites, update_sites, with_checks

__all__ = ["execute", "with_database"]

logger = logging.getLogger(__name__)

KINDS = {
    StepKind.DEPLOY_CODE: deploy_code,
    StepKind.UPDATE_CODE: update_code,
    StepKind.DELETE_SITES: delete_sites,
    StepKind.UPDATE_SITES: update_sites,
}
# A task can reach a worker before the transaction that launched its step has committed.
LAUNCH_COMMIT_WAIT = 5.0


def execute(step_id: int, owner: str, task_id: str | None = None) -> tuple[StepRun, Outcome] | None:
    """Run (or resume) one step if it is running and nobody else holds it.

    Returns the step and its outcome, or None when this worker did not run it (not running,
    held by another worker, or lost to another worker meanwhile).
    """
    close_old_connections()
    step = with_database(lambda: _runnable(step_id, task_id), "loading the step")
    if step is None or not with_database(lambda: step.claim(owner), "claiming the step"):
        return None
    try:
        return step, _run(step, owner)
    except LeaseLost:
        logger.warning("step %s: lease lost, another worker continues it", step_id)
        return None


def _runnable(step_id: int, task_id: str | None) -> StepRun | None:
    deadline = time.monotonic() + LAUNCH_COMMIT_WAIT
    while True:
        step = StepRun.objects.select_related("plan", "environment").filter(pk=step_id).first()
        if step is not None and step.state == StepState.RUNNING:
            return step
        launching = step is not None and task_id is not None and task_id not in step.task_ids
        if not launching or time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def _run(step: StepRun, owner: str) -> Outcome:
    try:
        ctx = StepContext(step, owner)
    except EnvironmentMisconfigured as exc:
        return Outcome(StepState.FAILED, str(exc))
    except Exception as exc:  # e.g. a URL saved outside the admin's validation: never left running
        logger.exception("step %s could not start", step.pk)
        return Outcome(StepState.FAILED, f"the step could not start: {type(exc).__name__}: {exc}")
    try:
        with connection.execute_wrapper(ctx.queries):
            outcome = _outcome(ctx, step)
            if step.kind == StepKind.DELETE_SITES and outcome.state != StepState.SUCCEEDED:
                outcome.message = with_checks(ctx, outcome.message)  # however it stopped
            return outcome
    finally:
        ctx.close()


def _outcome(ctx: StepContext, step: StepRun) -> Outcome:
    try:
        ctx.start()
        requested = ctx.beat()
        if requested:
            return Outcome.stopped(requested)
        if step.kind == StepKind.UPDATE_SITES and ctx.result.get("rollback"):
            return roll_back(ctx)  # `release rollback`: the step runs again for that, and only that
        return KINDS[step.kind](ctx)
    except LeaseLost:
        raise
    except Cancelled as exc:  # the client refused to send: the lease is gone
        raise LeaseLost(str(exc)) from None
    except EnvironmentMisconfigured as exc:
        return Outcome(StepState.FAILED, str(exc))
    except AuthenticationError as exc:
        return _with_error(credentials_refused(ctx, exc), step, exc)
    except Unavailable as exc:
        return _with_error(unreachable(ctx, exc), step, exc)
    except AtlasError as exc:
        # Retrying cannot help: the operator decides what next.
        return _with_error(Outcome(StepState.FAILED, f"Atlas error: {exc}"), step, exc)
    except Exception as exc:
        # Whatever else escapes (a selector saved outside the admin's validation, a database
        # error that outlasted the reconnects, a bug) ends the step, saying why: a step left
        # running would be re-enqueued by the watchdog forever.
        logger.exception("step %s failed on an unexpected error", step.pk)
        return Outcome(
            StepState.FAILED, f"the step stopped on an unexpected error: {type(exc).__name__}: {exc}"
        )


def _with_error(outcome: Outcome, step: StepRun, exc: AtlasError) -> Outcome:
    outcome.result = {**step.result, "error": {"status": exc.status, "body": exc.body}}
    return outcome
