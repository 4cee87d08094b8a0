"""Durable per-site progress with few database round trips.

Rows are marked `dispatched` a chunk at a time before their writes are sent, and results are
written back in bulk: the per-site loop costs a fraction of a query per site, not several.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from django.utils import timezone

from ..models import SiteResult, StepRun
from ..states import SiteState

FLUSH_ROWS = 100
FLUSH_SECONDS = 1.0
RESULT_FIELDS = ["state", "attempts", "http_status", "response", "message", "finished_at"]


@dataclass(frozen=True)
class SiteOutcome:
    state: str
    http_status: int | None
    response: object
    message: str
    attempts: int


class ResultRecorder:
    def __init__(self, step: StepRun) -> None:
        self.step = step
        totals = step.counts()
        self.targeted = totals["targeted"]
        self._failed_before = totals["failed"]
        self._failed_now = 0
        self._buffer: list[SiteResult] = []
        self._last_flush = time.monotonic()

    def dispatch(self, rows: Iterator[SiteResult], chunk: int) -> list[SiteResult]:
        """Take the next rows and durably mark the not-yet-sent ones dispatched (one query)."""
        taken = list(islice(rows, chunk))
        fresh = [row.pk for row in taken if row.state == SiteState.PENDING]
        if fresh:
            SiteResult.objects.filter(pk__in=fresh).update(state=SiteState.DISPATCHED)
        return taken

    def undispatch(self, rows: list[SiteResult]) -> None:
        never_sent = [row.pk for row in rows if row.state == SiteState.PENDING]
        if never_sent:
            SiteResult.objects.filter(pk__in=never_sent, state=SiteState.DISPATCHED).update(
                state=SiteState.PENDING
            )

    def add(self, row: SiteResult, outcome: SiteOutcome) -> None:
        row.state = outcome.state
        row.attempts += outcome.attempts
        row.http_status = outcome.http_status
        row.response = outcome.response
        row.message = outcome.message[:2000]
        row.finished_at = timezone.now()
        if outcome.state == SiteState.FAILED:
            self._failed_now += 1
        self._buffer.append(row)

    def failed_total(self) -> int:
        return self._failed_before + self._failed_now

    def maybe_flush(self) -> None:
        if len(self._buffer) >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            SiteResult.objects.bulk_update(self._buffer, RESULT_FIELDS, batch_size=500)
            self._buffer = []
        self._last_flush = time.monotonic()
