"""Site steps: delete available sites (3, 10, 13) and update sites in batches (4, 6, 11, 14).

The targets are snapshotted once, at launch, and persisted as SiteResult rows. Each batch then
runs with at most `environment.parallelism` Atlas writes in flight. Before a write is sent its row
is marked `dispatched` (durably, a chunk at a time); a dispatched row found on resume has an
unknown outcome and is re-read from Atlas before anything is sent again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from atlas.errors import AtlasError, Conflict, NotFound
from atlas.selectors import exclude_profile
from atlas.types import WriteResult

from ..models import SiteResult
from ..runbook import SWEEP_SELECTOR
from ..states import FailurePolicy, SiteState, StepState
from .code import find_release_item
from .context import Outcome, StepContext
from .recorder import ResultRecorder, SiteOutcome
from .snapshot import NoSelectors, take_snapshot

logger = logging.getLogger(__name__)
Work = Callable[[SiteResult], SiteOutcome]


def update_sites(ctx: StepContext) -> Outcome:
    return _run_site_step(ctx, delete=False)


def delete_sites(ctx: StepContext) -> Outcome:
    return _run_site_step(ctx, delete=True)


def _run_site_step(ctx: StepContext, *, delete: bool) -> Outcome:
    item = find_release_item(ctx)
    if item is None:
        plan = ctx.step.plan
        return Outcome(
            StepState.FAILED, f"no {plan.profile_name} {plan.version} profile item on {ctx.environment}"
        )
    if not ctx.result.get("snapshot"):
        if delete:
            ctx.result["pool_before"] = ctx.client.count("sites", {"status": "available"})
        try:
            take_snapshot(ctx, item.id, only_available=delete)
        except NoSelectors as exc:
            return Outcome(StepState.FAILED, str(exc))
    work = _deleter(ctx) if delete else _updater(ctx, item.id)
    stopped = _run_batches(ctx, work)
    if stopped:
        return stopped
    if delete:
        stopped = _wait_for_pool(ctx, item.id)
        if stopped:
            return stopped
    if ctx.step.params.get("sweep"):
        _sweep(ctx, item.id)
    return _final_outcome(ctx)


def _run_batches(ctx: StepContext, work: Work) -> Outcome | None:
    remaining = SiteResult.objects.filter(
        step=ctx.step, state__in=[SiteState.PENDING, SiteState.DISPATCHED]
    ).order_by("batch_index", "id")
    batches: dict[int, list[SiteResult]] = {}
    for row in remaining.only("id", "site_id", "path", "etag", "state", "attempts", "batch_index"):
        batches.setdefault(row.batch_index, []).append(row)
    recorder = ResultRecorder(ctx.step)
    for position, rows in enumerate(batches.values()):
        if position and ctx.environment.batch_pause_seconds:
            requested = ctx.sleep(ctx.environment.batch_pause_seconds)
            if requested:
                return Outcome.stopped(requested)
        stopped = _run_batch(ctx, rows, work, recorder)
        if stopped:
            return stopped
    return None


def _run_batch(
    ctx: StepContext, rows: list[SiteResult], work: Work, recorder: ResultRecorder
) -> Outcome | None:
    """At most `parallelism` writes in flight; as many again queued so no thread waits for us.

    A queued site is sent only if no stop (pause, abort, threshold) came meanwhile; one that is
    not sent goes back to pending.
    """
    parallelism = max(1, ctx.environment.parallelism)
    queue = iter(rows)
    ready: list[SiteResult] = []
    unsent: list[SiteResult] = []
    in_flight: dict = {}
    stop: Outcome | None = None
    stopping = threading.Event()

    def guarded(row: SiteResult) -> SiteOutcome | None:
        return None if stopping.is_set() else work(row)

    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="atlas") as pool:
        while True:
            stop = stop or _should_stop(ctx, recorder)
            if stop:
                stopping.set()
            while stop is None and len(in_flight) < parallelism * 2:
                if not ready:
                    ready = recorder.dispatch(queue, chunk=parallelism * 2)
                    if not ready:
                        break
                row = ready.pop(0)
                in_flight[pool.submit(guarded, row)] = row
            if not in_flight:
                break
            done, _ = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                row, outcome = in_flight.pop(future), future.result()
                if outcome is None:
                    unsent.append(row)
                else:
                    recorder.add(row, outcome)
            recorder.maybe_flush()
    # Rows marked dispatched but never sent go back to pending: nothing was sent for them.
    recorder.undispatch(ready + unsent)
    recorder.flush()
    if stop is not None and stop.message.startswith("failure threshold"):
        stop = _threshold_outcome(ctx, recorder)  # count the writes that were in flight too
    return stop


def _should_stop(ctx: StepContext, recorder: ResultRecorder) -> Outcome | None:
    requested = ctx.beat()
    if requested:
        return Outcome.stopped(requested)
    if ctx.environment.threshold_reached(recorder.failed_total(), recorder.targeted):
        return _threshold_outcome(ctx, recorder)
    return None


def _threshold_outcome(ctx: StepContext, recorder: ResultRecorder) -> Outcome:
    failed, targeted = recorder.failed_total(), recorder.targeted
    limit = ctx.environment.threshold_description()
    return Outcome(
        StepState.PAUSED, f"failure threshold ({limit}) reached: {failed} of {targeted} sites failed"
    )


def _updater(ctx: StepContext, profile_id: str) -> Work:
    client = ctx.client

    def work(row: SiteResult) -> SiteOutcome:
        etag = row.etag
        if row.state == SiteState.DISPATCHED:
            # Sent by a worker that died: re-read before sending anything (not a no-op on Atlas).
            site = client.get_site(row.site_id)
            if site is None or site.deleted:
                return SiteOutcome(SiteState.SKIPPED, 404, None, "the site no longer exists", 0)
            if site.profile == profile_id:
                return SiteOutcome(SiteState.SUCCEEDED, 200, None, "already on the release profile", 0)
            etag = site.etag
        return _attempt(lambda: client.update_site_profile(row.site_id, profile_id, etag=etag))

    return work


def _deleter(ctx: StepContext) -> Work:
    client = ctx.client

    def work(row: SiteResult) -> SiteOutcome:
        etag = row.etag
        if row.state == SiteState.DISPATCHED:
            site = client.get_site(row.site_id)
            if site is None or site.deleted:
                return SiteOutcome(SiteState.SUCCEEDED, 204, None, "already deleted", 0)
            if site.status != "available":
                return SiteOutcome(
                    SiteState.SKIPPED, 200, None, f"not deleted: status is now {site.status!r}", 0
                )
            etag = site.etag
        return _attempt(lambda: client.delete_available_site(row.site_id, etag=etag))

    return work


def _attempt(write: Callable[[], WriteResult]) -> SiteOutcome:
    try:
        result = write()
    except (Conflict, NotFound) as exc:
        if isinstance(exc, NotFound) or "no longer available" in exc.message:
            return SiteOutcome(SiteState.SKIPPED, exc.status, exc.body, exc.message, 1)
        return SiteOutcome(SiteState.FAILED, exc.status, exc.body, str(exc), 1)
    except AtlasError as exc:
        return SiteOutcome(SiteState.FAILED, exc.status, exc.body, str(exc), 1)
    message = "already done (re-read)" if result.already else ""
    return SiteOutcome(SiteState.SUCCEEDED, result.status, result.body or None, message, result.attempts)


def _wait_for_pool(ctx: StepContext, profile_id: str) -> Outcome | None:
    """Atlas refills the available pool every few minutes with the current profile; wait for it."""
    target = ctx.result.get("pool_before", 0)
    where = {"status": "available", "code.profile": profile_id}
    waited, interval = 0.0, 2.0
    count = ctx.client.count("sites", where)
    while count < target and waited < ctx.environment.pool_wait_seconds:
        requested = ctx.sleep(interval)
        if requested:
            return Outcome.stopped(requested)  # a resumed step waits again; the deletions are done
        waited += interval
        count = ctx.client.count("sites", where)
    ctx.result["pool_after"] = count
    ctx.save_result()
    return None


def _sweep(ctx: StepContext, profile_id: str) -> None:
    """Report (never update) sites still not on the release profile."""
    sites = ctx.client.list_sites(exclude_profile(dict(SWEEP_SELECTOR), profile_id))
    ctx.result["sweep"] = [
        {"_id": s.id, "sid": s.sid, "path": s.path, "status": s.status, "update_group": s.update_group}
        for s in sites
    ]
    ctx.save_result()


def _final_outcome(ctx: StepContext) -> Outcome:
    counts = ctx.step.counts()
    ctx.result["counts"] = counts
    notes = []
    if "pool_after" in ctx.result and ctx.result["pool_after"] < ctx.result.get("pool_before", 0):
        notes.append(
            f"pool refill pending: {ctx.result['pool_after']} of {ctx.result['pool_before']} available"
        )
    if ctx.result.get("sweep"):
        notes.append(f"sweep: {len(ctx.result['sweep'])} sites still not on the release profile")
    summary = f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['skipped']} skipped"
    if counts["failed"]:
        policy_fails = ctx.environment.failure_policy == FailurePolicy.FAIL
        state = StepState.FAILED if policy_fails else StepState.PAUSED
        return Outcome(
            state, "; ".join([summary, *notes]) + ": retry the failed sites, skip or abort", ctx.result
        )
    return Outcome(StepState.SUCCEEDED, "; ".join([summary, *notes]), ctx.result)
