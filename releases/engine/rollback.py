"""Putting sites back (`release rollback`): each named site of an update step goes back onto the
code item it was on before the step changed it (recorded when the step froze its targets).

A rollback runs on the step's lease, as the step itself does, so a worker that dies mid-rollback
is replaced and the new one goes on. Every site is read first (a fresh ETag, and its profile
now), PATCHed with the client's §0 rules, then verified against its earlier item's version by the
step's `Verifier`. A site whose profile is neither the release's nor its earlier item was changed
by someone else since the step: it is left alone. The step then ends in the state it had.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from atlas.errors import AtlasError, AuthenticationError, Cancelled, NotFound, Unavailable
from atlas.types import NEVER, parse_date

from ..db import with_database
from ..models import AuditEvent, SiteResult, StepRun
from ..states import ROLLING_BACK, RollbackState, StepState
from .code import find_release_item
from .context import LeaseLost, Outcome, StepContext, credentials_refused, unreachable
from .verify import VerificationImpossible, Verifier, answered_at

ROW_FIELDS = ["rollback", "rollback_at", "rollback_answered_at", "rollback_message"]


class Rollback:
    """What a rollback verifies (`Verifier`'s track): sites `updating` after their rollback PATCH,
    each against the version of the item it went back to; the end is the site's rollback state
    (its state stays what the step made it: a rollback does not make a failed site succeeded)."""

    label = "rollback verification"
    end_fields = ["rollback", "rollback_message"]

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions

    def waiting(self, step_id: int):
        return SiteResult.objects.filter(step_id=step_id, rollback=RollbackState.UPDATING)

    def expected(self, row: SiteResult) -> str:
        return self.versions.get(row.previous_profile, "")

    def patched(self, row: SiteResult) -> datetime | None:
        """When Atlas stored the rollback PATCH, on Atlas's clock: only a later report is fresh."""
        return row.rollback_at

    def answered(self, row: SiteResult) -> datetime:
        """When the portal recorded Atlas's answer, on the portal's clock (the deadline runs from
        there, as the forward update's does: Atlas's clock may be off the portal's)."""
        return row.rollback_answered_at or timezone.now()

    def verified(self, row: SiteResult, now: datetime) -> None:
        row.rollback = RollbackState.DONE
        row.rollback_message = f"back on {self.expected(row)}: verified at {timezone.localtime(now):%H:%M:%S}"

    def failed(self, row: SiteResult, now: datetime, message: str) -> None:
        row.rollback, row.rollback_message = RollbackState.FAILED, message


@dataclass
class Sent:
    """What one site's rollback write did."""

    state: str
    message: str = ""
    at: datetime | None = None


class Stopped(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def roll_back(ctx: StepContext) -> Outcome:
    """Run the step's rollback (`ctx.result["rollback"]`) to its end, or until a stop."""
    info = ctx.result["rollback"]
    release = ctx.result.get("profile_id") or getattr(find_release_item(ctx), "id", "")
    parallelism = max(1, ctx.environment.parallelism)
    pool = ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="rollback")
    track = Rollback(info["versions"])
    verifier = Verifier(ctx, track, failed=lambda n: None, writes=pool) if ctx.environment.verify else None
    try:
        stopped = _run(ctx, pool, verifier, track, release, parallelism)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if verifier is not None:
            verifier.close()
    return stopped or _ended(ctx, info)


def _run(ctx, pool, verifier, track, release: str, parallelism: int) -> Outcome | None:
    ctx.halt.clear()
    while True:
        requested = ctx.beat()
        if requested:
            return _stopped(ctx, requested)
        room = parallelism if verifier is None else min(parallelism, verifier.room())
        rows = (
            with_database(lambda room=room: _dispatch(ctx, room), "marking rollback writes") if room else []
        )
        try:
            sent = _send(ctx, pool, rows, release, track, verified=verifier is None)
        except Stopped as exc:
            return Outcome(exc.outcome.state, exc.outcome.message, dict(ctx.result))
        if verifier is not None:
            verifier.answered(sum(1 for s in sent if s.state == RollbackState.UPDATING))
            try:
                verifier.poll()
            except VerificationImpossible as exc:
                return Outcome(
                    StepState.PAUSED,
                    f"rollback paused: verification is impossible: {exc}. Grant the account Atlas's drush "
                    f"role and resume, or turn verification off (environment set {ctx.environment.name} "
                    "--verify off) and resume",
                    dict(ctx.result),
                )
            ctx.doing(f"rolling back: {verifier.waiting} sites updating at Atlas onto their earlier item")
        if not rows and not _left(ctx):
            return None
        if not rows:
            requested = ctx.sleep(0.25)
            if requested:
                return _stopped(ctx, requested)


def _left(ctx: StepContext) -> bool:
    waiting = SiteResult.objects.filter(step=ctx.step, rollback__in=ROLLING_BACK)
    return with_database(waiting.exists, "reading the rollback")


def _dispatch(ctx: StepContext, room: int) -> list[SiteResult]:
    """The next sites to send, marked `dispatched` first (durably, while this worker holds the step):
    one found so by the next owner may have been sent, and is read again before anything is."""
    todo = SiteResult.objects.filter(
        step=ctx.step, rollback__in=[RollbackState.REQUESTED, RollbackState.DISPATCHED]
    ).order_by("id")
    with transaction.atomic():
        _hold(ctx)
        rows = list(todo[:room])
        SiteResult.objects.filter(pk__in=[row.pk for row in rows]).update(rollback=RollbackState.DISPATCHED)
    return rows


def _hold(ctx: StepContext) -> None:
    mine = StepRun.objects.filter(pk=ctx.step.pk, lease_owner=ctx.owner, state=StepState.RUNNING)
    if not mine.select_for_update().exists():
        raise LeaseLost(f"step {ctx.step.pk}: lease lost while rolling back")


def _send(ctx, pool, rows, release: str, track: Rollback, *, verified: bool) -> list[Sent]:
    """Send the rows' writes in parallel and record what each did; a refusal of the credentials
    or Atlas away stops the rollback (raised as `Stopped`) once the writes out have ended."""
    futures = {pool.submit(_write, ctx, row, release): row for row in rows}
    done, stop = [], None
    for future in as_completed(futures):
        row = futures[future]
        try:
            sent = future.result()
        except Stopped as exc:
            stop = stop or exc
            continue
        if sent is None:  # not sent (stopping) or cancelled between attempts: stays dispatched
            continue
        if verified and sent.state == RollbackState.UPDATING:
            sent = Sent(
                RollbackState.DONE, f"back on {track.expected(row)} (not verified: verification is off)"
            )
        row.rollback, row.rollback_message, row.rollback_at = sent.state, sent.message, sent.at
        row.rollback_answered_at = timezone.now() if sent.at is not None else None
        done.append((row, sent))
    if done:
        with_database(lambda: _save(ctx, [row for row, _ in done]), "recording the rollback")
    if stop is not None:
        raise stop
    return [sent for _, sent in done]


def _save(ctx: StepContext, rows: list[SiteResult]) -> None:
    with transaction.atomic():
        _hold(ctx)  # a worker that lost the step records nothing over the new owner's rows
        SiteResult.objects.bulk_update(rows, ROW_FIELDS, batch_size=500)


def _write(ctx: StepContext, row: SiteResult, release: str) -> Sent | None:
    """One site: read it (fresh ETag, its profile now), then PATCH it back unless it is there."""
    if ctx.halt.is_set() or ctx.lost:
        return None
    try:
        site = ctx.client.get_site(row.site_id)
        if site is None or site.deleted:
            return Sent(RollbackState.FAILED, "not rolled back: the site no longer exists")
        if site.profile == row.previous_profile:
            # A report counts once written after the site's last change (Atlas's clock, as a PATCH's).
            changed = parse_date(site.updated)
            changed = timezone.now() if changed == NEVER else changed
            return Sent(RollbackState.UPDATING, "already on its earlier item: verified, not PATCHed", changed)
        if site.profile != release:
            return Sent(
                RollbackState.FAILED,
                f"not rolled back: its profile is now {site.profile!r}, neither the release's item nor "
                "its earlier one (changed since the step): left alone",
            )
        result = ctx.client.update_site_profile(row.site_id, row.previous_profile, etag=site.etag)
    except AuthenticationError as exc:
        ctx.halt.set()
        raise Stopped(credentials_refused(ctx, exc)) from None
    except Unavailable as exc:
        ctx.halt.set()
        raise Stopped(unreachable(ctx, exc)) from None
    except Cancelled:
        return None
    except NotFound:
        return Sent(RollbackState.FAILED, "not rolled back: the site no longer exists")
    except AtlasError as exc:
        return Sent(RollbackState.FAILED, f"not rolled back: {exc}")
    return Sent(RollbackState.UPDATING, "", answered_at(result))


def _stopped(ctx: StepContext, requested: str) -> Outcome:
    """A pause keeps the rollback for the resume. An abort ends the rollback, each site saying
    what it is left as, and the step is as it was before the rollback (never 'aborted')."""
    if requested != "abort":
        return Outcome(StepState.PAUSED, "paused by the operator during a rollback", dict(ctx.result))
    before = ctx.result["rollback"]["before"]

    def end() -> None:
        with transaction.atomic():
            _hold(ctx)
            # The abort is carried out here: the step must not end 'aborted' for it.
            StepRun.objects.filter(pk=ctx.step.pk).update(requested="")
            ctx.step.abandon_rollback()

    with_database(end, "recording the aborted rollback")
    ctx.result.pop("rollback", None)
    message = "; ".join(filter(None, [before["message"], "rollback aborted by the operator"]))
    return Outcome(before["state"], message[:4000], dict(ctx.result))


def _ended(ctx: StepContext, info: dict) -> Outcome:
    """Audit each site's end, keep the rollback in the step's history, and end as it was."""
    rows = list(
        SiteResult.objects.filter(step=ctx.step, pk__in=info.get("ids", []))
        .order_by("id")
        .values_list("site_id", "path", "previous_profile", "rollback", "rollback_message")
    )
    for site_id, path, previous, state, message in rows:
        AuditEvent.record(
            "rollback_site",
            username="system",
            outcome=AuditEvent.Outcome.OK if state == RollbackState.DONE else AuditEvent.Outcome.ERROR,
            step=ctx.step,
            parameters={
                "site": site_id,
                "path": path,
                "to": previous,
                "version": info["versions"].get(previous),
            },
            message=message,
        )
    done = sum(1 for row in rows if row[3] == RollbackState.DONE)
    summary = f"rollback by {info['by']}: {done} of {len(rows)} sites back on their earlier item"
    if done < len(rows):
        summary += f", {len(rows) - done} not (see each site)"
    ctx.result.pop("rollback", None)
    ctx.result.setdefault("rollbacks", []).append(
        {"by": info["by"], "at": timezone.now().isoformat(), "sites": len(rows), "done": done}
    )
    before = info["before"]
    message = "; ".join(filter(None, [before["message"], summary]))
    return Outcome(before["state"], message[:4000], dict(ctx.result))
