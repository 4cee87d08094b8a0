"""What a step's code needs while it runs: the Atlas client, the lease heartbeat, operator requests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings

from atlas.client import AtlasClient

from ..models import StepRun
from ..states import StepState


class LeaseLost(Exception):
    """Another worker took the step over (our lease lapsed): stop without touching it further."""


@dataclass
class Outcome:
    state: str
    message: str = ""
    result: dict = field(default_factory=dict)

    @classmethod
    def stopped(cls, requested: str, by: str = "the operator") -> Outcome:
        if requested == "abort":
            return cls(StepState.ABORTED, f"aborted by {by}")
        return cls(StepState.PAUSED, f"paused by {by}")


class StepContext:
    def __init__(self, step: StepRun, owner: str, client: AtlasClient | None = None) -> None:
        self.step = step
        self.owner = owner
        self.environment = step.environment
        self.client = client or step.environment.client()
        self.result: dict = dict(step.result or {})
        self._last_beat = 0.0
        self._requested = ""

    def beat(self, force: bool = False) -> str:
        """Renew the lease (at most every few seconds); return '', 'pause' or 'abort'."""
        now = time.monotonic()
        if force or now - self._last_beat >= settings.STEP_LEASE_SECONDS / 4:
            requested = self.step.heartbeat(self.owner)
            if requested is None:
                raise LeaseLost(f"step {self.step.pk} lease lost by {self.owner}")
            self._requested = requested
            self._last_beat = now
        return self._requested

    def sleep(self, seconds: float) -> str:
        """Wait, keeping the lease; return early with the operator's request if one comes."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            requested = self.beat(force=True)
            if requested:
                return requested
            time.sleep(min(left, 1.0))
        return self.beat()

    def save_result(self) -> None:
        StepRun.objects.filter(pk=self.step.pk).update(result=self.result)
        self.step.result = dict(self.result)
