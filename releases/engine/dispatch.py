"""One batch of a site step's writes, kept in flight by a small dispatcher.

`BatchDispatcher` holds the batch's loop state and runs one phase after another until nothing is
in flight: `stop` (an operator's request, a lost lease, the failure threshold), `fill` (send up to
the window), `collect` (record the writes that ended) and `verify` (a hook, empty for now).
Also here: what a stopped batch says (`threshold_outcome`, `needs_check`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, SimpleQueue

from atlas.errors import Cancelled

from ..db import with_database
from ..models import SiteResult
from ..states import SiteState, StepState
from .context import THRESHOLD, LeaseLost, Outcome, StepContext
from .credentials import CredentialsCheck
from .recorder import ResultRecorder, SiteOutcome
from .verify import VerificationImpossible, Verifier

logger = logging.getLogger(__name__)
Work = Callable[[SiteResult], SiteOutcome]


class StopStep(Exception):
    """Raised from a site's work when continuing the step cannot help (Atlas refuses the
    credentials, or does not answer): the batch stops sending at once."""

    def __init__(self, outcome: Outcome, *, sent: bool) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome
        self.sent = sent  # False: the request was refused before anything was applied


class BatchDispatcher:
    """At most `parallelism` writes in flight; as many again queued so no thread waits for us.

    Until Atlas has accepted the credentials one write at a time, and none before a delete step's
    probe answered (`CredentialsCheck`); an operator's request or a lost lease meanwhile stops the
    batch first.

    A queued site is sent only if no stop (pause, abort, threshold, lost lease, an error) came
    meanwhile; one that is not sent goes back to pending. A write in flight when the step stops
    cannot be called back: its row stays `dispatched` unless its answer arrives, and whoever runs
    the step next re-reads it from Atlas before sending anything.

    One dispatcher runs one batch (`run`, once); the pool, the recorder and the credentials check
    are the step's, shared by its batches.
    """

    def __init__(
        self,
        ctx: StepContext,
        rows: Iterator[SiteResult],
        work: Work,
        recorder: ResultRecorder,
        pool: ThreadPoolExecutor,
        parallelism: int,
        credentials: CredentialsCheck,
        verifier: Verifier | None = None,
    ) -> None:
        self.ctx = ctx
        self.verifier = verifier  # an update step with verification on: answered is not done
        self.rows = iter(rows)
        self.work = work
        self.recorder = recorder
        self.pool = pool
        self.credentials = credentials
        # Writes queued behind the threads, so a thread never waits for this loop to hand it work
        # (recording results, renewing nothing: the heartbeat has its own thread).
        self.window = parallelism * 2 + 8
        self.allowed = 1  # the writes that may be out now: one until the credentials are proven
        self.ready: list[SiteResult] = []  # marked dispatched, not yet submitted
        self.unsent: list[SiteResult] = []  # marked dispatched, known never sent
        self.in_flight: dict[Future, SiteResult] = {}
        # Each write's future as it ends: the loop takes the next to finish instead of waiting on every
        # write in flight again.
        self.finished: SimpleQueue = SimpleQueue()
        self.stopped: Outcome | None = None
        # Every row taken (marked dispatched or known done): until then a full window (no room
        # under `max_unverified`) waits for verification instead of ending the batch.
        self.sent_all = False
        self.halt = ctx.halt  # once set, the client sends nothing more (queued or retrying)

    def run(self) -> Outcome | None:
        """Write the batch's sites; return why it stopped early, or None once all were answered."""
        self.halt.clear()
        try:
            while True:
                self.stop()
                self.fill()
                if not self.in_flight and not self._updating() and (self.sent_all or self.stopped):
                    break
                self.collect()
                self.verify()
        except LeaseLost:
            self.halt.set()  # another worker owns the step now: write nothing more
            raise
        except BaseException:
            self._abandon()
            raise
        return self._finish()

    # -- the phases, in the order `run` calls them ----------------------------------------------

    def stop(self) -> Outcome | None:
        """Whether the batch is stopping: a stop already met, else the operator's request or the
        failure threshold now (a lost lease raises `LeaseLost`). A stopping batch halts the
        client, so queued and retrying writes are not sent; those in flight still end."""
        self.stopped = self.stopped or self._requested()
        if self.stopped:
            self.halt.set()
        return self.stopped

    def fill(self) -> None:
        """Send writes up to the window, marking each chunk dispatched first (`recorder.dispatch`).
        Nothing while stopping; nothing before a delete step's probe answered (then `stop` looks
        again first); one write out until Atlas has accepted the credentials. Raises what the
        probe met (a refusal, Atlas unreachable) before anything is dispatched."""
        if self.stopped is None and self.credentials.waiting():
            self.stopped = self._wait_for_credentials()
            self.stop()
        if self.stopped is not None:
            return
        self.allowed = self.credentials.writes_allowed(self.window)
        if self.verifier is not None:
            # Atlas's update queue is the real throttle: the sites PATCHed and not yet verified,
            # with those whose PATCH is out, stay within `max_unverified`.
            self.allowed = min(self.allowed, self.verifier.room())
        while len(self.in_flight) < self.allowed:
            if not self.ready:
                # Marked dispatched a window at a time (one lease-checked query): a fraction of a
                # query a site, and a lost lease is found within one window. While the credentials
                # are unproven, only the one write that goes.
                self.ready = self.recorder.dispatch(self.rows, chunk=self.allowed)
                if not self.ready:
                    self.sent_all = True
                    break
            row = self.ready.pop(0)
            future = self.pool.submit(self._guarded, row)
            self.in_flight[future] = row
            future.add_done_callback(self.finished.put)

    def collect(self) -> None:
        """Take the writes that ended (waiting up to half a second for the first) and record their
        outcomes (flushed every so often). A `StopStep` stops the batch; a write skipped because
        the batch was stopping goes back to pending; a write cancelled between attempts stays
        dispatched, for the next run to re-read."""
        timeout = 0.5
        if self.verifier is not None and self.stopped is None:
            # Wake for the verifier's next phase: a round that comes late makes every site wait.
            timeout = min(timeout, max(0.0, self.verifier.next_phase()))
        for future in _answered(self.finished, timeout=timeout):
            row = self.in_flight.pop(future)
            try:
                outcome = future.result()
            except StopStep as exc:
                self.stopped = self.stopped or exc.outcome
                self.halt.set()
                if not exc.sent:
                    self.unsent.append(row)
                continue
            except Cancelled:
                continue
            if outcome is None:
                self.unsent.append(row)
            else:
                self.recorder.add(row, outcome)
                if outcome.state == SiteState.UPDATING:
                    self.verifier.answered()
        self.recorder.maybe_flush()

    def verify(self) -> None:
        """A verification round when one is due (`Verifier.poll`): sites whose own report and
        page show the release succeed, those past their deadline fail (and count against the
        threshold `stop` checks). Nothing while stopping: the sites stay `updating`, and whoever
        runs the step next goes on verifying them without sending anything again."""
        if self.verifier is None or self.stopped is not None:
            return
        try:
            if self.verifier.poll(flush=self.recorder.flush) and self._updating():
                self.ctx.doing(self._verifying_line())
        except VerificationImpossible as exc:
            self.stopped = Outcome(
                StepState.PAUSED,
                f"verification is impossible: {exc}. The sites PATCHed so far stay 'updating'; "
                "grant the account Atlas's drush role and resume, or turn verification off "
                f"(environment set {self.ctx.environment.name} --verify off) and resume",
            )
            self.halt.set()

    def _updating(self) -> int:
        """Sites of the batch answered and not yet verified (0 without verification or once stopping)."""
        if self.verifier is None or self.stopped is not None:
            return 0
        return self.verifier.waiting

    def _verifying_line(self) -> str:
        return (
            f"{len(self.in_flight)} PATCHes out, {self.verifier.waiting} sites updating at Atlas "
            f"(at most {self.verifier.limit}), waiting for their reports and pages"
        )

    # -- helpers --------------------------------------------------------------------------------

    def _guarded(self, row: SiteResult) -> SiteOutcome | None:
        """The site's write, on a pool thread; None (not sent) if the batch is stopping by then."""
        return None if self.halt.is_set() or self.ctx.lost else self.work(row)

    def _requested(self) -> Outcome | None:
        requested = self.ctx.beat()
        if requested:
            return Outcome.stopped(requested)
        if self.ctx.environment.threshold_reached(self.recorder.failed_total(), self.recorder.targeted):
            return threshold_outcome(self.ctx, self.recorder)
        return None

    def _wait_for_credentials(self) -> Outcome | None:
        """Wait for the probe's answer, watching for a pause, an abort or a lost lease meanwhile."""
        activity = self.ctx.activity
        self.ctx.doing("checking the Atlas credentials")
        while self.credentials.waiting():
            stop = self._requested()
            if stop:
                return stop
            self.credentials.wait(0.25)
        self.ctx.doing(activity)
        return None

    def _finish(self) -> Outcome | None:
        """Nothing in flight: return the sites never sent to pending and record the rest."""
        self.recorder.undispatch(self.ready + self.unsent)
        self.recorder.flush()
        if self.stopped is not None and self.stopped.reason == THRESHOLD:
            return threshold_outcome(self.ctx, self.recorder)  # count the writes that were in flight too
        return self.stopped

    def _abandon(self) -> None:
        """After an unexpected error: halt, record the answers already received and return the
        sites never sent to pending, if the database lets us; the error is what the step reports."""
        self.halt.set()
        # Queued writes that never started are known unsent: back to pending, not "unanswered".
        self.unsent += [row for future, row in self.in_flight.items() if future.cancel()]
        try:
            self.recorder.undispatch(self.ready + self.unsent)
            self.recorder.flush()
        except Exception:
            logger.exception("step %s: could not record results after an error", self.recorder.step.pk)


def _answered(finished: SimpleQueue, timeout: float) -> list[Future]:
    """The writes that ended: waits up to `timeout` for the first, then takes those already there."""
    try:
        done = [finished.get(timeout=timeout)]
    except Empty:
        return []
    while True:
        try:
            done.append(finished.get_nowait())
        except Empty:
            return done


def threshold_outcome(ctx: StepContext, recorder: ResultRecorder | None = None) -> Outcome:
    """The pause for a reached failure threshold, counted by `recorder` or else by the database."""
    if recorder is not None and recorder.targeted:
        failed, targeted = recorder.failed_total(), recorder.targeted
    else:
        counts = with_database(ctx.step.counts, "counting the step's sites")
        failed, targeted = counts["failed"], counts["targeted"]
    limit = ctx.environment.threshold_description()
    message = f"failure threshold ({limit}) reached: {failed} of {targeted} sites failed"
    return Outcome(StepState.PAUSED, "; ".join(filter(None, [message, needs_check(ctx)])), reason=THRESHOLD)


def needs_check(ctx: StepContext) -> str:
    """Sites whose instance may have been destroyed: named in the step's message (and so in its
    audit event); retrying never touches them, an operator must look at each in Atlas."""
    rows = SiteResult.objects.filter(step=ctx.step, needs_check=True).order_by("id")
    paths = with_database(lambda: list(rows.values_list("path", "site_id")[:21]), "reading the step's sites")
    if not paths:
        return ""
    total = len(paths) if len(paths) <= 20 else with_database(rows.count, "counting the step's sites")
    named = ", ".join(f"{path or '?'} ({site_id})" for path, site_id in paths[:20])
    more = f" and {total - 20} more" if total > 20 else ""
    return (
        f"{total} sites possibly lost their instance to a DELETE while they were not available: {named}"
        f"{more}. Check each in Atlas; retrying the failed sites leaves them alone"
    )
