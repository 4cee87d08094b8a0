"""Knowing that each updated site works (atlas-api.md §3.6).

Atlas answers a site's PATCH at once and runs the real update later on its update queue, writing
nothing back when it ends. A site of an update step is therefore `updating` once its PATCH was
answered, and `succeeded` only when it is *verified*: its own `statistics` report, written after
the PATCH, shows the release's version with no error-level status (`drupal_system_status` false:
pending database updates count as an error), and its page then answers 200. Reports are asked
for with the environment's `drush atlas-statistics` item (its `query` set to the sites waiting),
read in bulk, and pages probed with bounded parallelism. A site not verified by its deadline
has failed verification. Everything seen is kept on the site's row, so a worker that takes the
step over goes on verifying without sending any PATCH again.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from atlas.client import site_page_url
from atlas.errors import AtlasError, AuthenticationError
from atlas.types import NEVER

from ..db import with_database
from ..models import SiteResult, StepRun
from ..states import SiteState, StepState
from .asking import Pacing
from .context import LeaseLost, StepContext

logger = logging.getLogger(__name__)

# Atlas's Celery time limit for a task, counted from when it starts: how long a site failed at its
# deadline may still hold a place in Atlas's update queue, at most.
TASK_LIMIT = 900.0
DRUSH_LABEL = "express-release-portal: verification reports"
DRUSH_COMMANDS = ["atlas-statistics"]
SEEN_FIELDS = ["reported_version", "reported_error", "reported_at", "page_status"]


class VerificationImpossible(Exception):
    """Atlas will not run the report command for this account (no `drush` role)."""


def answered_at(result) -> datetime:
    """When Atlas stored a site's PATCH, on Atlas's clock (its `_updated`); now on ours when the
    write was found applied by a re-read (no answer body): a report counts only if written after."""
    updated = result.updated if result is not None else NEVER
    return timezone.now() if updated == NEVER else updated


class Forward:
    """What a step's own update verifies: sites `updating` after their PATCH onto the release,
    against the release's version; the end is the site's state."""

    label = "verification"
    end_fields = ["state", "verified_at", "finished_at", "message"]

    def __init__(self, version: str) -> None:
        self.version = version

    def waiting(self, step_id: int):
        return SiteResult.objects.filter(step_id=step_id, state=SiteState.UPDATING)

    def expected(self, row: SiteResult) -> str:
        return self.version

    def patched(self, row: SiteResult) -> datetime | None:
        """When Atlas stored the PATCH (its whole seconds): only a later report is fresh."""
        return row.patched_at

    def answered(self, row: SiteResult) -> datetime:
        """When the portal recorded Atlas's answer to the site's PATCH (on its own clock: the
        deadline runs from there)."""
        return row.finished_at or row.patched_at or timezone.now()

    def failed_late(self, step_id: int, since: datetime):
        """Sites that failed verification at their deadline since `since` (their update may still
        be queued at Atlas): a worker taking the step over counts them against the limit again."""
        return SiteResult.objects.filter(
            step_id=step_id, state=SiteState.FAILED, finished_at__gte=since, message__startswith=self.label
        )

    def verified(self, row: SiteResult, now: datetime) -> None:
        row.state, row.verified_at, row.finished_at, row.message = SiteState.SUCCEEDED, now, now, ""

    def failed(self, row: SiteResult, now: datetime, message: str) -> None:
        row.state, row.finished_at, row.message = SiteState.FAILED, now, message


class Verifier:
    """The sites of one step that Atlas is updating, and the rounds that verify them."""

    def __init__(self, ctx: StepContext, track, *, failed, writes: ThreadPoolExecutor) -> None:
        env = ctx.environment
        self.ctx = ctx
        self.track = track  # which sites wait, against which version (`Forward`, a rollback's)
        self.limit = env.unverified_limit()
        self.timeout = timedelta(seconds=env.verify_timeout_seconds)
        self.site_url = env.site_url
        self.failed = failed  # called with the number of sites that failed verification
        # The step's pool of Atlas writes: asking for reports (a PATCH and an execute) takes one of
        # its threads, so the environment's parallelism holds for every write, these included.
        self._writes = writes
        self.waiting = with_database(self._updating().count, "counting sites being updated")
        self._due = 0.0
        self._first_round: float | None = None
        # A site past its deadline fails only once this run has asked for reports and given them
        # time to come (Atlas's command queue): after a long pause, the reports read in the first
        # round were written before it, while the sites were still updating.
        self._grace = 10 * settings.ATLAS_VERIFY_POLL_SECONDS
        self._drush = None
        # The next ask waits until Atlas's command queue has run the last one (asking.py).
        self._pacing = Pacing(ctx.client, poll=settings.ATLAS_VERIFY_POLL_SECONDS, grace=self._grace)
        # Sites failed at their deadline whose report never showed the release: their forward
        # update may still be queued at Atlas, so each keeps counting against `max_unverified`
        # until a report shows it ended, or Atlas's task limit passes (site id -> (until, on the
        # monotonic clock; the version that would show it ended)). Those an earlier run of the step
        # left are read back: a worker that takes the step over, or a resume, keeps them.
        self._overdue: dict[str, tuple[float, str]] = with_database(
            self._still_queued, "reading overdue sites"
        )
        self._looked: dict[str, float] = {}  # site id -> when all its report was last read (monotonic)
        self._asked: list[SiteResult] | None = None  # asked for reports, read at `_read_at`
        self._read_at = 0.0
        self._pages = ThreadPoolExecutor(
            max_workers=min(8, max(1, env.parallelism)), thread_name_prefix="page"
        )

    def _still_queued(self) -> dict[str, tuple[float, str]]:
        """The overdue sites an earlier run of the step left (their slots outlive the worker)."""
        failed_late = getattr(self.track, "failed_late", None)
        if failed_late is None:
            return {}
        hold = max(self.timeout.total_seconds(), TASK_LIMIT)
        now, clock = timezone.now(), time.monotonic()
        rows = failed_late(self.ctx.step.pk, now - timedelta(seconds=hold)).only(
            "site_id", "finished_at", "reported_version", "reported_error", "path", "sid"
        )
        overdue = {}
        for row in rows:
            expected = self.track.expected(row)
            if row.reported_version != expected or row.reported_error is not False:
                overdue[row.site_id] = (clock + hold - (now - row.finished_at).total_seconds(), expected)
        return overdue

    def close(self) -> None:
        self._pages.shutdown(wait=False, cancel_futures=True)

    def room(self) -> int:
        """How many more sites may be PATCHed now: `max_unverified` less those updating, and less
        those failed at their deadline whose update may still be queued at Atlas."""
        now = time.monotonic()
        self._overdue = {site: entry for site, entry in self._overdue.items() if entry[0] > now}
        return max(0, self.limit - self.waiting - len(self._overdue))

    def answered(self, count: int = 1) -> None:
        self.waiting += count

    def next_phase(self) -> float:
        """Seconds until `poll` has something to do (the dispatcher waits no longer for answers)."""
        if self._asked is not None:
            return self._read_at - time.monotonic()
        if self.waiting <= 0 and not self._overdue:
            return float("inf")
        return self._due - time.monotonic()

    def poll(self, flush=None) -> bool:
        """A round in two phases. When it is due: ask Atlas for fresh reports of the sites
        updating. `ATLAS_VERIFY_READ_SECONDS` later (Atlas's command queue writes them meanwhile):
        read those reports, probe the pages of the sites that reported the release cleanly, and
        record what was seen. Read at once, the reports would be the previous round's: every site
        would wait a round more. True if a phase ran. `flush` first writes the answers still
        buffered (the rows it reads must say `updating`)."""
        now = time.monotonic()
        if self._asked is not None:
            if now < self._read_at:
                return False
            rows, self._asked = self._asked, None
            self._read(rows)
            self._pacing.look()
            return True
        if (self.waiting <= 0 and not self._overdue) or now < self._due:
            return False
        self._due = now + settings.ATLAS_VERIFY_POLL_SECONDS
        if flush is not None:
            flush()
        rows = with_database(lambda: list(self._updating().order_by("id")), "reading sites being updated")
        self.waiting = len(rows)
        ids = [row.site_id for row in rows] + list(self._overdue)
        if not ids:
            return True
        if not self._pacing.still_running():
            self._writes.submit(self._ask_reports, ids).result()
        if self._first_round is None:
            self._first_round = time.monotonic()
        self._asked, self._read_at = rows, time.monotonic() + settings.ATLAS_VERIFY_READ_SECONDS
        return True

    def _read(self, rows: list[SiteResult]) -> None:
        """Read the reports that show a site's expected version cleanly (all a verification acts
        on: a site still updating costs no read), and every report of the sites due a look."""
        reports = self._clean_reports(rows)
        ending = self._past_deadline(rows)
        looked = ending + self._due_a_look(rows, ending)
        if looked:
            reports.update(self.ctx.client.statistics([row.site_id for row in looked]))
            now = time.monotonic()
            self._looked.update((row.site_id, now) for row in looked)
        self._forget_ran(reports)
        if not rows:
            return
        clean = [row for row in rows if self._see(row, reports.get(row.site_id))]
        for row, status in zip(clean, self._pages.map(self._page, clean), strict=True):
            row.page_status = status
        self._decide(rows, {id(row) for row in clean}, {id(row) for row in ending})

    def _clean_reports(self, rows: list[SiteResult]) -> dict:
        """The waiting and overdue sites' reports that show their expected version with no
        error-level status, written after the earliest of their PATCHes: a bulk read a version."""
        wanted: dict[str, tuple[list[str], list]] = {}
        for row in rows:
            ids, patched = wanted.setdefault(self.track.expected(row), ([], []))
            ids.append(row.site_id)
            patched.append(self.track.patched(row))
        for site_id, (_, expected) in self._overdue.items():
            ids, patched = wanted.setdefault(expected, ([], []))
            ids.append(site_id)
            patched.append(None)  # its PATCH's time is not kept: any clean report counts
        reports = {}
        for version, (ids, patched) in wanted.items():
            since = None if None in patched else min(patched)
            reports.update(self.ctx.client.statistics(ids, showing=version, since=since))
        return reports

    def _past_deadline(self, rows: list[SiteResult]) -> list[SiteResult]:
        """The sites that fail this round unless verified: past their deadline, once this run has
        asked for reports and given them time to come. All their reports are read first: the
        failure says what each last reported, and whether its update may still be queued. Chosen
        before the round's page probes: a deadline passing during them counts from the next round."""
        if not self._settled():
            return []
        now = timezone.now()
        return [row for row in rows if now - self.track.answered(row) > self.timeout]

    def _due_a_look(self, rows: list[SiteResult], ending: list[SiteResult]) -> list[SiteResult]:
        """The other sites whose every report is read this round, whatever it shows: every
        `ATLAS_VERIFY_LOOK_SECONDS`, those waiting longer than that (the step page shows what each
        reported while it waits)."""
        now, clock, look = timezone.now(), time.monotonic(), settings.ATLAS_VERIFY_LOOK_SECONDS
        skip = {id(row) for row in ending}
        due = []
        for row in rows:
            waited = (now - self.track.answered(row)).total_seconds()
            last = self._looked.get(row.site_id, clock - waited)
            if id(row) not in skip and waited > look and clock - last > look:
                due.append(row)
        return due

    def _settled(self) -> bool:
        return self._first_round is not None and time.monotonic() - self._first_round >= self._grace

    # -- one round --------------------------------------------------------------------------

    def _updating(self):
        return self.track.waiting(self.ctx.step.pk)

    def _ask_reports(self, ids: list[str]) -> None:
        """Run `drush atlas-statistics` on the waiting sites (Atlas's command queue)."""
        try:
            if self._drush is None:
                self._drush = self.ctx.client.drush_item(DRUSH_LABEL, DRUSH_COMMANDS)
            self._drush = self.ctx.client.run_drush(self._drush, {"_id": {"$in": ids}})
            self._pacing.asked(ids, self._drush.updated)
        except AuthenticationError as exc:
            raise VerificationImpossible(str(exc)) from None
        except AtlasError as exc:  # the reports the sites' cron writes still count
            self._drush = None
            logger.warning("step %s: asking Atlas for reports failed: %s", self.ctx.step.pk, exc)

    def _see(self, row: SiteResult, report) -> bool:
        """Record the site's latest report; True when it shows the release cleanly since the PATCH."""
        if report is None or report.version is None:  # Atlas's empty item: never reported yet
            return False
        row.reported_version, row.reported_error, row.reported_at = (
            report.version,
            report.error,
            report.updated,
        )
        patched = self.track.patched(row)
        fresh = patched is not None and report.updated > patched
        return fresh and report.version == self.track.expected(row) and report.error is False

    def _page(self, row: SiteResult) -> int | None:
        return self.ctx.client.page_status(site_page_url(self.site_url, row.path or row.sid))

    def _decide(self, rows: list[SiteResult], clean: set[int], ending: set[int]) -> None:
        now = timezone.now()
        verified, failed = [], []
        for row in rows:
            if id(row) in clean and row.page_status == 200:
                self.track.verified(row, now)
                verified.append(row)
            elif id(row) in ending:
                self.track.failed(row, now, self._why(row, probed=id(row) in clean))
                failed.append(row)
        with_database(lambda: self._save(rows, verified + failed), "recording verification")
        self.waiting -= len(verified) + len(failed)
        for row in failed:
            expected = self.track.expected(row)
            if row.reported_version != expected or row.reported_error is not False:
                # Its update never showed as ended: it may be queued or running still.
                until = time.monotonic() + max(self.timeout.total_seconds(), TASK_LIMIT)
                self._overdue[row.site_id] = (until, expected)
        if failed:
            self.failed(len(failed))

    def _forget_ran(self, reports: dict) -> None:
        """Overdue sites whose report now shows the release cleanly: their update ran to its end,
        the slot is free (one that shows it with pending updates may still be running)."""
        for site_id, (_, expected) in list(self._overdue.items()):
            report = reports.get(site_id)
            if report is not None and report.version == expected and report.error is False:
                del self._overdue[site_id]

    def _why(self, row: SiteResult, *, probed: bool) -> str:
        seconds = self.timeout.total_seconds()
        if row.reported_at is None:
            seen = "no report from the site"
        else:
            status = (
                "an error-level status (e.g. pending database updates)" if row.reported_error else "no error"
            )
            seen = f"it last reported version {row.reported_version or '?'} with {status} at {row.reported_at:%H:%M:%S}"
            patched = self.track.patched(row)
            if patched is not None and row.reported_at < patched:
                seen += " (before its PATCH)"
        if probed:
            page = "did not answer" if row.page_status is None else f"answered {row.page_status}"
            seen += f"; its page {page}"
        return f"{self.track.label}: not verified within {seconds:g} s of its PATCH: {seen}"

    def _save(self, rows: list[SiteResult], ended: list[SiteResult]) -> None:
        step = StepRun.objects.filter(
            pk=self.ctx.step.pk, lease_owner=self.ctx.owner, state=StepState.RUNNING
        )
        with transaction.atomic():
            if not step.select_for_update().exists():
                raise LeaseLost(f"step {self.ctx.step.pk}: lease lost while verifying")
            SiteResult.objects.bulk_update(rows, SEEN_FIELDS, batch_size=500)
            if ended:
                SiteResult.objects.bulk_update(ended, self.track.end_fields, batch_size=500)
