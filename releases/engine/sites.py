"""Site steps: delete available sites (3, 10, 13) and update sites in batches (4, 6, 11, 14).

The targets are snapshotted once, at launch, and persisted as SiteResult rows. Each batch then
runs with at most `environment.parallelism` Atlas writes in flight (`dispatch.BatchDispatcher`).
Before a write is sent its row is marked `dispatched` (durably, a chunk at a time); a dispatched
row found on resume has an unknown outcome and is re-read from Atlas before anything is sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from atlas.selectors import exclude_profile

from ..db import with_database
from ..models import SiteResult
from ..runbook import SWEEP_SELECTOR
from ..states import CANARY_PASSED, CANARY_WAITING, FailurePolicy, SiteState, StepKind, StepState
from .code import find_release_item, no_release_item
from .context import THRESHOLD, LeaseLost, Outcome, StepContext
from .credentials import CredentialsCheck
from .dispatch import BatchDispatcher, Work, needs_check, threshold_outcome
from .recorder import ResultRecorder
from .site_work import deleter, updater
from .snapshot import NoSelectors, Snapshot
from .verify import Forward, Verifier

logger = logging.getLogger(__name__)


def update_sites(ctx: StepContext) -> Outcome:
    return _run_site_step(ctx, delete=False)


def delete_sites(ctx: StepContext) -> Outcome:
    return _run_site_step(ctx, delete=True)


def with_checks(ctx: StepContext, message: str) -> str:
    """`message`, naming the sites to check in Atlas if there are any (a pause, an outage, an
    abort or a failure of a delete step names them too)."""
    try:
        check = needs_check(ctx)
    except Exception:  # the database is away too: the rows still carry the flag
        logger.exception("step %s: could not list the sites to check", ctx.step.pk)
        return message
    return f"{message}; {check}" if check and check not in message else message


def _run_site_step(ctx: StepContext, *, delete: bool) -> Outcome:
    ctx.doing("finding the release's code item")
    item = find_release_item(ctx)
    if item is None:
        return no_release_item(ctx)
    try:
        snapshot = _new_snapshot(ctx, item.id, delete)
    except NoSelectors as exc:
        return Outcome(StepState.FAILED, str(exc))
    # Atlas binds to LDAP on every request: one request of ours is out until Atlas has accepted
    # the credentials, rather than a 401 per site (atlas-api.md §2). A delete step's probe runs
    # while the first batch is read; an update step's first PATCH is its own probe.
    credentials = CredentialsCheck(ctx, probe=delete)
    if snapshot is not None:
        snapshot.start()
    try:
        work = deleter(ctx) if delete else updater(ctx, item.id)
        # Deletions go one at a time: the read before each DELETE is then the last word on the
        # site, with no other write of ours arriving in between to start an install (§3.4).
        # They are few (the pool), so this costs seconds, not minutes.
        parallelism = 1 if delete else max(1, ctx.environment.parallelism)
        stopped = _run_batches(ctx, work, snapshot, parallelism, credentials)
    except LeaseLost:
        if snapshot is not None:
            snapshot.close()  # another worker owns the step: store nothing more
        raise
    finally:
        if credentials.waiting():
            ctx.halt.set()  # the step ends with the probe out: it is not sent, or not sent again
        if snapshot is not None and not ctx.lost:
            _complete_snapshot(ctx, snapshot)
    if stopped is not None and stopped.reason == THRESHOLD:
        stopped = threshold_outcome(ctx)  # counted now that every target is frozen
    if stopped:
        return stopped
    return _after_batches(ctx, item.id, delete)


def _new_snapshot(ctx: StepContext, profile_id: str, delete: bool) -> Snapshot | None:
    """The step's targets, to read from Atlas; None when an earlier run froze them all."""
    if ctx.result.get("snapshot"):
        return None
    if delete:
        ctx.result["pool_before"] = ctx.client.count("sites", {"status": "available"})
    # A snapshot that an earlier run left unfinished is read again whole: its batches too.
    ctx.result.pop("batches", None)
    ctx.result.pop("shrunk", None)
    return Snapshot(ctx, profile_id, only_available=delete)


def _after_batches(ctx: StepContext, profile_id: str, delete: bool) -> Outcome:
    """Every batch written: wait for the pool to refill (a delete step), sweep, and sum up."""
    if delete:
        stopped = _wait_for_pool(ctx, profile_id)
        if stopped:
            return stopped
    if ctx.step.params.get("sweep"):
        ctx.doing("sweeping for sites still off the release profile")
        _sweep(ctx, profile_id)
    return _final_outcome(ctx)


def _complete_snapshot(ctx: StepContext, snapshot: Snapshot) -> None:
    """However the step stops (but for a lost lease), its targets end frozen: the rest of the
    snapshot is read (reads only) so a relaunch, and the launch page, see all of them."""
    if ctx.result.get("snapshot"):
        return
    try:
        batches = snapshot.finish()
    except Exception:  # Atlas went away too: the next run reads the snapshot again
        logger.warning("step %s: snapshot left incomplete", ctx.step.pk, exc_info=True)
        return
    ctx.result.update(batches=batches, snapshot=True, profile_id=snapshot.profile_id)
    ctx.save_result()


def _grown(ctx: StepContext, batch: dict) -> str:
    """Whether the batch's snapshot holds more sites than the operator confirmed (fewer is fine,
    and is said in the step's message)."""
    confirmed = ctx.step.confirmed_targets
    if confirmed is None:  # launched without a confirmation (`--yes`): nothing to compare
        return ""
    seen = confirmed.get(batch["name"])
    if seen is None:
        # A batch the operator never saw (a group added since the confirmation).
        return f"{batch['name']} has {batch['count']} (not in the confirmation)" if batch["count"] else ""
    if batch["count"] == seen:
        return ""
    if batch["count"] < seen:
        ctx.result.setdefault("shrunk", []).append(f"{batch['name']} has {batch['count']} (confirmed {seen})")
        return ""
    return f"{batch['name']} has {batch['count']} (confirmed {seen})"


def _freeze(ctx: StepContext, snapshot: Snapshot | None, index: int) -> str:
    """Wait until batch `index` is frozen and record it; return what grew past the confirmation."""
    if snapshot is None:
        ctx.save_result()
        return ""
    ctx.doing(f"reading batch {index + 1} of {snapshot.batch_count} from Atlas")
    batch = snapshot.wait_frozen(index)
    ctx.result.setdefault("batches", []).append(batch)
    if index == snapshot.batch_count - 1:
        ctx.result.update(snapshot=True, profile_id=snapshot.profile_id)
    grown = _grown(ctx, batch)
    if grown:
        # Freeze the rest too (reads only), so a resume goes on with these targets as they are.
        ctx.result["batches"] = snapshot.finish()
        ctx.result.update(snapshot=True, profile_id=snapshot.profile_id)
    ctx.save_result()
    return grown


def _run_batches(
    ctx: StepContext, work: Work, snapshot: Snapshot | None, parallelism: int, credentials: CredentialsCheck
) -> Outcome | None:
    total = snapshot.batch_count if snapshot else len(ctx.result.get("batches", []))
    recorder = ResultRecorder(ctx.step, ctx.owner)
    # One pool for every batch, so no batch waits for its threads to start.
    pool = ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="atlas")
    verifier = _verifier(ctx, recorder, pool)
    try:
        for index in range(total):
            requested = _pause_before_batch(ctx, index)
            if requested:
                return Outcome.stopped(requested)
            grown = _freeze(ctx, snapshot, index)  # saves the result, the batch's start included
            if grown:
                return Outcome(
                    StepState.PAUSED,
                    f"more sites than confirmed: {grown}. Nothing of that batch was written: review the "
                    "targets (release preview) and resume to go on with them, or abort",
                )
            if snapshot is not None:
                # Percent thresholds count against the sites frozen so far: while later batches are
                # still being read, that can only pause the step sooner, never later.
                recorder.targets(snapshot.frozen_sites)
            name = ctx.result["batches"][index]["name"]
            ctx.doing(f"writing batch {index + 1} of {total} ({name})")
            rows = _remaining(ctx, index)
            dispatcher = BatchDispatcher(ctx, rows, work, recorder, pool, parallelism, credentials, verifier)
            stopped = dispatcher.run()
            if stopped and _has_remaining(ctx, index):
                return stopped
            # Done, even when a stop came with its last answers: the pause before the next batch
            # then counts from now, on this run or a resumed one.
            ctx.result.setdefault("batch_finished_at", {})[str(index)] = time.time()
            ctx.save_result()
            if stopped:
                return stopped
            if index < total - 1 and _canary_waits(ctx, verifier, index):
                return _canary_outcome(ctx, index)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if verifier is not None:
            verifier.close()
    return None


def _verifier(ctx: StepContext, recorder: ResultRecorder, pool: ThreadPoolExecutor) -> Verifier | None:
    """The step's verifier: an update step with verification on. With it off, sites an earlier
    run left `updating` are taken as done (an answered PATCH, as before verification)."""
    if ctx.step.kind != StepKind.UPDATE_SITES:
        return None
    if not ctx.environment.verify:
        updating = SiteResult.objects.filter(step=ctx.step, state=SiteState.UPDATING)
        with_database(
            lambda: updating.update(
                state=SiteState.SUCCEEDED, message="not verified: verification was turned off"
            ),
            "recording sites not verified",
        )
        return None
    track = Forward(ctx.step.plan.version)
    return Verifier(ctx, track, failed=recorder.failed_verification, writes=pool)


def _canary_waits(ctx: StepContext, verifier: Verifier | None, index: int) -> bool:
    """PROD's canary: once the first batch with sites is verified, the step waits for an operator (once)."""
    if verifier is None or not ctx.environment.canary or ctx.result.get("canary") == CANARY_PASSED:
        return False
    # The first batch with sites is the canary (an empty first group proves nothing).
    counts = [batch.get("count", 0) for batch in ctx.result.get("batches", [])[: index + 1]]
    return bool(counts) and counts[-1] > 0 and not any(counts[:-1])


def _canary_outcome(ctx: StepContext, index: int) -> Outcome:
    counts = with_database(ctx.step.counts, "counting the step's sites")
    name = ctx.result["batches"][index]["name"]
    ctx.result["canary"] = CANARY_WAITING
    return Outcome(
        StepState.PAUSED,
        f"canary: the first batch ({name}) is verified ({counts['succeeded']} sites working, "
        f"{counts['failed']} failed); nothing more is sent until an operator continues "
        "(Continue on the step's page, or release resume)",
        dict(ctx.result),
    )


def _has_remaining(ctx: StepContext, index: int) -> bool:
    todo = SiteResult.objects.filter(
        step=ctx.step,
        batch_index=index,
        state__in=[SiteState.PENDING, SiteState.DISPATCHED, SiteState.UPDATING],
    )
    return with_database(todo.exists, "reading the batch")


def _remaining(ctx: StepContext, index: int, chunk: int = 500) -> Iterator[SiteResult]:
    """The batch's sites still to send, read from the database a chunk at a time (by id, so
    marking rows dispatched meanwhile does not shift the pages)."""
    fields = ("id", "site_id", "path", "etag", "state", "attempts", "batch_index", "patched_at")
    todo = SiteResult.objects.filter(
        step=ctx.step, batch_index=index, state__in=[SiteState.PENDING, SiteState.DISPATCHED]
    ).only(*fields)
    last = 0
    while True:
        page = with_database(
            lambda last=last: list(todo.filter(id__gt=last).order_by("id")[:chunk]), "reading the batch"
        )
        if not page:
            return
        yield from page
        last = page[-1].id


def _pause_before_batch(ctx: StepContext, index: int) -> str:
    """The pause between batches holds across resumes and crashes: it counts from the moment the
    previous batch finished (recorded), not from when this worker started. A batch already begun
    (a resume in its middle) goes on at once. Marks the batch begun (saved with the next result)."""
    started = ctx.result.setdefault("batch_started", [])
    if index in started:
        return ""
    finished = [at for i, at in ctx.result.get("batch_finished_at", {}).items() if int(i) < index]
    left = max(finished) + ctx.environment.batch_pause_seconds - time.time() if finished else 0
    if left > 0:
        ctx.doing(f"pausing {left:.0f} s before batch {index + 1}")
        requested = ctx.sleep(left)
        if requested:
            return requested
    started.append(index)
    # When the batch's writes began (after the pause): the release report's batch durations.
    ctx.result.setdefault("batch_started_at", {})[str(index)] = time.time()
    return ""


def _wait_for_pool(ctx: StepContext, profile_id: str) -> Outcome | None:
    """Atlas refills the available pool every few minutes with the current profile; wait for it."""
    target = ctx.result.get("pool_before", 0)
    where = {"status": "available", "code.profile": profile_id}
    waited, interval, limit = 0.0, 2.0, ctx.environment.pool_wait_seconds
    count = ctx.client.count("sites", where)
    while count < target and waited < limit:
        ctx.doing(f"waiting for the pool to refill: {count} of {target}, {waited:.0f} s of {limit:.0f} s")
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
    counts = with_database(ctx.step.counts, "counting the step's sites")
    ctx.result["counts"] = counts
    ctx.result["db_queries"] = ctx.queries.count  # this run's, all of its threads
    notes = []
    if "pool_after" in ctx.result and ctx.result["pool_after"] < ctx.result.get("pool_before", 0):
        notes.append(
            f"pool refill pending: {ctx.result['pool_after']} of {ctx.result['pool_before']} available"
        )
    if ctx.result.get("sweep"):
        notes.append(f"sweep: {len(ctx.result['sweep'])} sites still not on the release profile")
    if ctx.result.get("shrunk"):
        notes.append("fewer sites than confirmed: " + "; ".join(ctx.result["shrunk"]))
    summary = f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['skipped']} skipped"
    check = needs_check(ctx)
    if check:
        return Outcome(StepState.FAILED, "; ".join([summary, *notes, check]), ctx.result)
    if counts["failed"]:
        policy_fails = ctx.environment.failure_policy == FailurePolicy.FAIL
        state = StepState.FAILED if policy_fails else StepState.PAUSED
        return Outcome(
            state, "; ".join([summary, *notes]) + ": retry the failed sites, skip or abort", ctx.result
        )
    return Outcome(StepState.SUCCEEDED, "; ".join([summary, *notes]), ctx.result)
