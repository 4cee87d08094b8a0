"""What a step's code needs while it runs: the Atlas client, the lease heartbeat, operator requests.

The lease is renewed by a heartbeat thread for the whole time a worker holds a step — also while
the step's own thread is blocked in a long Atlas call (a `PATCH /code` cascade can take minutes),
so no other worker takes a step over from a live one. When the heartbeat finds the lease gone,
the step's thread stops at its next decision point and writes nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection
from django.utils import timezone

from atlas.client import AtlasClient

from ..db import QueryCounter, with_database
from ..models import StepRun
from ..states import StepState

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker took the step over (our lease lapsed): stop without touching it further."""


# Why a step stopped, when the code that called it decides on it (never the message's wording).
THRESHOLD = "threshold"


@dataclass
class Outcome:
    state: str
    message: str = ""
    result: dict = field(default_factory=dict)
    reason: str = ""  # e.g. THRESHOLD

    @classmethod
    def stopped(cls, requested: str, by: str = "the operator") -> Outcome:
        if requested == "abort":
            return cls(StepState.ABORTED, f"aborted by {by}")
        return cls(StepState.PAUSED, f"paused by {by}")


def clock(timestamp: float) -> str:
    """A Unix time as the operator's local HH:MM:SS."""
    return f"{timezone.localtime(datetime.fromtimestamp(timestamp, tz=UTC)):%H:%M:%S}"


class StepContext:
    def __init__(self, step: StepRun, owner: str, client: AtlasClient | None = None) -> None:
        self.step = step
        self.owner = owner
        self.environment = step.environment
        self.client = client or step.environment.client()
        self.result: dict = dict(step.result or {})
        self.activity = ""
        self.queries = QueryCounter()  # installed in each of the step's threads
        self._requested = ""
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None
        # Set while a batch is stopping (pause, abort, threshold, an error): with a lost lease,
        # it keeps the client from sending anything more, retries under way included.
        self.halt = threading.Event()
        self.client.proceed = lambda: not (self.lost or self.halt.is_set())
        # When the step's own thread last showed progress, and until when the lease is surely ours:
        # a lease period after the last successful renewal *started*, less a heartbeat and a
        # second for clocks between hosts.
        self._progress = time.monotonic()
        self._valid_until = time.monotonic()

    # -- the heartbeat -------------------------------------------------------------------------

    def start(self) -> None:
        """Renew the lease once now (raising LeaseLost if it is gone), then from a thread."""
        self._renew()
        self._heart = threading.Thread(target=self._beat_forever, name=f"lease-{self.step.pk}", daemon=True)
        self._heart.start()

    def close(self) -> None:
        self._stop.set()
        if self._heart is not None:
            self._heart.join(timeout=30)
        self.client.close()

    def _interval(self) -> float:
        return max(0.2, min(settings.STEP_LEASE_SECONDS / 4, 2.0))

    def _beat_forever(self) -> None:
        try:
            with connection.execute_wrapper(self.queries):
                self._beat_until_stopped()
        finally:
            connection.close()  # this thread's own connection

    def stall_limit(self) -> float:
        """How long the step's own thread may show no progress before the heartbeat stops
        renewing the lease: the longest single Atlas call (a code PATCH with its cascade) plus
        two leases. A thread stuck past that lets the watchdog hand the step to another worker."""
        connect, read = self.client.code_write_timeout
        return connect + read + 2 * settings.STEP_LEASE_SECONDS

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self._interval()):
            now = time.monotonic()
            if now - self._progress > self.stall_limit():
                logger.error(
                    "step %s: no progress for %.0f s; the lease is left to lapse",
                    self.step.pk,
                    now - self._progress,
                )
                self._lost.set()
                return
            if now > self._valid_until:
                # Not renewed in time: another worker may hold the step by now.
                logger.error("step %s: lease not renewed in time; stopping", self.step.pk)
                self._lost.set()
                return
            try:
                self._renew()
            except LeaseLost:
                return
            except Exception:  # keep beating: the lease lapses only if the database stays away
                logger.exception("step %s: lease renewal failed", self.step.pk)

    def _renew(self) -> None:
        started = time.monotonic()
        requested = with_database(
            lambda: self.step.heartbeat(self.owner, self._activity_line()), "lease renewal"
        )
        if requested is None:
            self._lost.set()
            raise LeaseLost(f"step {self.step.pk} lease lost by {self.owner}")
        self._requested = requested
        lease = settings.STEP_LEASE_SECONDS
        self._valid_until = started + lease - self._interval() - min(1.0, lease / 10)

    def _activity_line(self) -> str:
        since = self.client.failing_since
        quiet = time.monotonic() - self._progress
        if since is None and quiet > max(60.0, 3 * settings.STEP_LEASE_SECONDS):
            return f"{self.activity} (no progress for {quiet:.0f} s)"
        if since is None:
            return self.activity
        return (
            f"retrying Atlas {self.environment} (not answering since {clock(since)}: "
            f"{self.client.last_failure})"
        )

    # -- what the step's own thread asks ------------------------------------------------------

    @property
    def lost(self) -> bool:
        """The lease is gone, or no longer surely ours (a renewal blocked past its validity)."""
        if not self._lost.is_set() and self._heart is not None and time.monotonic() > self._valid_until:
            self._lost.set()
        return self._lost.is_set()

    def beat(self, force: bool = False) -> str:
        """Return '', 'pause' or 'abort' (the operator's request); raise LeaseLost when the lease is
        gone. `force` renews the lease now instead of relying on the heartbeat thread."""
        self._progress = time.monotonic()
        if force:
            self._renew()
        if self.lost:
            raise LeaseLost(f"step {self.step.pk} lease lost by {self.owner}")
        return self._requested

    def doing(self, activity: str) -> None:
        """Say what the step is doing (shown in the admin and `release status`)."""
        self.activity = activity
        self._progress = time.monotonic()

    def sleep(self, seconds: float) -> str:
        """Wait, keeping the lease; return early with the operator's request if one comes."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            requested = self.beat()
            if requested:
                return requested
            time.sleep(min(left, 0.25))
        # The last look asks the database, not the heartbeat's answer of up to a beat ago: a pause
        # or abort that came at the very end of the wait is not lost.
        return self.beat(force=True)

    def requested_now(self) -> str:
        """The operator's request as the database says it now ('' to go on); renews the lease."""
        return self.beat(force=True)

    @contextmanager
    def resends_ask_the_operator(self) -> Iterator[None]:
        """While it holds, the client sends a write (or a retry of one after a 503 or a timeout)
        only if no pause or abort came meanwhile, asked of the database each time: for the code
        steps, whose few writes each change a whole environment."""
        previous = self.client.proceed
        self.client.proceed = lambda: previous() and not self.requested_now()
        try:
            yield
        finally:
            self.client.proceed = previous

    def save_result(self) -> None:
        """Write the step's result, only while this worker still holds the step."""
        if self.lost:  # the time check and the database check must agree: either ends the run
            raise LeaseLost(f"step {self.step.pk} lease lost by {self.owner}")
        rows = with_database(
            lambda: StepRun.objects.filter(
                pk=self.step.pk, lease_owner=self.owner, state=StepState.RUNNING
            ).update(result=self.result),
            "saving the step's result",
        )
        if rows != 1:
            self._lost.set()
            raise LeaseLost(f"step {self.step.pk} lease lost by {self.owner}")
        self.step.result = dict(self.result)


def credentials_refused(ctx: StepContext, exc: Exception) -> Outcome:
    env = ctx.environment
    return Outcome(
        StepState.FAILED,
        f"Atlas {env.name} refused the credentials (username {env.username!r}, password variable "
        f"{env.password_env}): the step stopped at once, sending nothing more (requests already in "
        f"flight, at most {max(1, env.parallelism)}, were refused too), as Atlas binds to LDAP on "
        "every request and repeated failures can lock the account. Fix the variable, then launch "
        "the step again",
    )


def unreachable(ctx: StepContext, exc: Exception) -> Outcome:
    since = ctx.client.failing_since
    when = clock(since) if since is not None else "now"
    return Outcome(
        StepState.PAUSED,
        f"Atlas {ctx.environment.name} unreachable since {when} ({exc}); retries are exhausted. "
        "Resume once Atlas answers: sites whose outcome is unknown are re-read before anything "
        "is sent again",
    )
