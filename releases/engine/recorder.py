"""Durable per-site progress with few database round trips.

Rows are marked `dispatched` a chunk at a time before their writes are sent, and results are
written back in bulk: the per-site loop costs a fraction of a query per site, not several.
Every write checks that this worker still holds the step's lease: a worker that lost it writes
nothing more (the next owner re-reads the dispatched sites from Atlas).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

from django.db import transaction
from django.utils import timezone

from ..db import with_database
from ..models import SiteResult, StepRun
from ..states import SiteState, StepState
from .context import LeaseLost

FLUSH_ROWS = 250
FLUSH_SECONDS = 2.0  # results are written every 250 sites or 2 s: a fraction of a query a site
RESULT_FIELDS = [
    "state", "attempts", "http_status", "response", "message", "finished_at", "needs_check", "patched_at",
]  # fmt: skip


@dataclass(frozen=True)
class SiteOutcome:
    state: str
    http_status: int | None
    response: object
    message: str
    attempts: int
    needs_check: bool = False  # an operator must look at the site in Atlas (never retried)
    patched_at: datetime | None = None  # `updating`: when Atlas stored the PATCH (its clock)


class ResultRecorder:
    def __init__(self, step: StepRun, owner: str) -> None:
        self.step = step
        self.owner = owner
        totals = with_database(step.counts, "counting the step's sites")
        self._targeted = lambda: totals["targeted"]
        # Failures count from the operator's last resume (StepRun.resume): earlier ones are listed
        # on the step, and do not hold it at its threshold again.
        baseline = (step.result or {}).get("failed_baseline", 0)
        self._failed_before = max(0, totals["failed"] - baseline)
        self._failed_now = 0
        self._buffer: list[SiteResult] = []
        self._last_flush = time.monotonic()

    def _mine(self):
        return StepRun.objects.filter(pk=self.step.pk, lease_owner=self.owner, state=StepState.RUNNING)

    def dispatch(self, rows: Iterator[SiteResult], chunk: int) -> list[SiteResult]:
        """Take the next rows and durably mark the not-yet-sent ones dispatched (one query)."""
        taken = list(islice(rows, chunk))
        fresh = [row.pk for row in taken if row.state == SiteState.PENDING]
        if fresh:
            marked = with_database(
                lambda: SiteResult.objects.filter(
                    pk__in=fresh, step__in=self._mine(), state=SiteState.PENDING
                ).update(state=SiteState.DISPATCHED),
                "dispatching sites",
            )
            if marked != len(fresh):
                raise LeaseLost(f"step {self.step.pk}: lease lost while dispatching sites")
        return taken

    def undispatch(self, rows: list[SiteResult]) -> None:
        never_sent = [row.pk for row in rows if row.state == SiteState.PENDING]
        if never_sent:
            with_database(
                lambda: SiteResult.objects.filter(
                    pk__in=never_sent, step__in=self._mine(), state=SiteState.DISPATCHED
                ).update(state=SiteState.PENDING),
                "returning unsent sites",
            )

    def add(self, row: SiteResult, outcome: SiteOutcome) -> None:
        row.state = outcome.state
        row.attempts += outcome.attempts
        row.http_status = outcome.http_status
        row.response = outcome.response
        row.message = outcome.message[:2000]
        row.finished_at = timezone.now()
        row.needs_check = outcome.needs_check
        row.patched_at = outcome.patched_at
        if outcome.state == SiteState.FAILED:
            self._failed_now += 1
        self._buffer.append(row)

    @property
    def targeted(self) -> int:
        """The step's sites known so far (its snapshot may still be reading later batches)."""
        return self._targeted()

    def targets(self, count) -> None:
        self._targeted = count

    def failed_total(self) -> int:
        return self._failed_before + self._failed_now

    def failed_verification(self, count: int) -> None:
        """Sites that failed verification (recorded by the verifier) count like any other failure."""
        self._failed_now += count

    def maybe_flush(self) -> None:
        if len(self._buffer) >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            with_database(self._write_buffer, "recording site results")
            self._buffer = []
        self._last_flush = time.monotonic()

    def _write_buffer(self) -> None:
        # Successes are alike: one UPDATE per outcome instead of a CASE per row and field
        # (bulk_update's SQL costs the worker more CPU than the Atlas calls it records). Each
        # takes the latest finish of its flush (at most FLUSH_SECONDS late, never early). Atlas's
        # answer is kept for the sites that did not simply succeed.
        # Sites now updating at Atlas are alike too: they take the latest PATCH time of their
        # flush, so a report counts for them only if written after all of theirs (never early).
        alike: dict[tuple, list[SiteResult]] = defaultdict(list)
        other: list[SiteResult] = []
        for row in self._buffer:
            if row.state in (SiteState.SUCCEEDED, SiteState.UPDATING) and not row.needs_check:
                alike[(row.state, row.attempts, row.http_status, row.message)].append(row)
            else:
                other.append(row)
        with transaction.atomic():
            if not self._mine().select_for_update().exists():
                raise LeaseLost(f"step {self.step.pk}: lease lost before recording results")
            for (state, attempts, status, message), rows in alike.items():
                patched = [row.patched_at for row in rows if row.patched_at is not None]
                SiteResult.objects.filter(pk__in=[row.pk for row in rows]).update(
                    state=state, attempts=attempts, http_status=status, message=message,
                    finished_at=max(row.finished_at for row in rows), response=None, needs_check=False,
                    patched_at=max(patched) if patched else None,
                )  # fmt: skip
            if other:
                SiteResult.objects.bulk_update(other, RESULT_FIELDS, batch_size=500)
