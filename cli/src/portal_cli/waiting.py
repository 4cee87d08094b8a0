"""`--wait`: poll the step's URL until it leaves `running`; for a stage, follow the steps the
portal launches next in the same environment (the launch answered with them: `chain`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .text import progress_line

DONE = ("succeeded", "skipped")


@dataclass
class Result:
    """How a wait ended: the steps followed (documents here, StepRun rows in `manage.py release`)."""

    steps: list
    succeeded: bool
    message: str = ""
    timed_out: bool = False


@dataclass(kw_only=True)
class Polling:
    """What a wait for a step shares, here and in `manage.py release --wait`: whom to tell, the
    deadline, and the pace. `sleep` and `clock` are injectable so that waiting can be tested
    without a worker."""

    report: Callable[[str], None]
    timeout: float | None = None
    poll: float = 1.0
    # The portal launches a stage's next step as the previous one ends; one still not started
    # this long after was not launched (refused, or its worker died in between).
    grace: float = 15.0
    quiet_every: float = 5.0  # seconds between progress lines while nothing but counts change
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _deadline: float | None = field(default=None, init=False)

    def start(self) -> None:
        self._deadline = None if self.timeout is None else self.clock() + self.timeout

    def expired(self) -> bool:
        return self._deadline is not None and self.clock() >= self._deadline


@dataclass(kw_only=True)
class Waiter(Polling):
    get_step: Callable[[int], dict]  # the step document (`GET …/steps/N/`)

    def follow(self, number: int, *, chain: list[int] | None = None) -> Result:
        """Follow step `number`, then (a stage) each later step of `chain` the portal launches."""
        if self._deadline is None:
            self.start()
        followed: list[dict] = []
        while True:
            step = self._until_not_running(number)
            if step is None:
                return Result(followed, False, self._timeout_message(number), timed_out=True)
            followed.append(step)
            if step["state"] != "succeeded":
                why = f": {step['message']}" if step.get("message") else ""
                return Result(followed, False, f"step {number} ended {step['state']}{why}")
            rest = [n for n in (chain or []) if n > number]
            if not rest:
                return Result(followed, True)
            following, problem = self._continuation(step, rest)
            if following is None:
                return Result(followed, not problem, problem, timed_out=problem.startswith("timed out"))
            number = following

    def _until_not_running(self, number: int) -> dict | None:
        last_line, last_at = None, None
        while True:
            step = self.get_step(number)["step"]
            line, now = progress_line(step), self.clock()
            if line != last_line and (
                last_at is None or step["state"] != "running" or now - last_at >= self.quiet_every
            ):
                self.report(line)
                last_line, last_at = line, now
            if step["state"] != "running":
                return step
            if self.expired():
                return None
            self.sleep(self.poll)

    def _continuation(self, previous: dict, rest: list[int]) -> tuple[int | None, str]:
        number, since = rest[0], self.clock()
        while True:
            step = self.get_step(number)["step"]
            if _started_after(step, previous):
                return number, ""
            if step["state"] in DONE or self.clock() - since >= self.grace:
                break
            if self.expired():
                return None, f"timed out after {self.timeout:g}s waiting for step {number} to start"
            self.sleep(self.poll)
        left = [n for n in rest if self.get_step(n)["step"]["state"] not in DONE]
        if not left:
            return None, ""
        return None, (
            f"the stage stopped after step {previous['number']}: step {left[0]} was not launched "
            "(see the audit trail; launch it with `portal launch`)"
        )

    def _timeout_message(self, number: int) -> str:
        return (
            f"timed out after {self.timeout:g}s: step {number} is still running "
            "(it carries on; follow it with `portal status`)"
        )

    def approval(self, number: int, request_id: int) -> str:
        """Wait for the decision on request `request_id`: 'approved', 'withdrawn' or 'timeout'."""
        if self._deadline is None:
            self.start()
        self.report(f"step {number}: waiting for another user to approve (portal approve --step {number})")
        while True:
            request = self.get_step(number).get("request") or {}
            if request.get("id") != request_id or request.get("state") != "pending":
                state = request.get("state", "withdrawn") if request.get("id") == request_id else "withdrawn"
                self.report(f"step {number}: {state} by {request.get('decided_by') or '?'}")
                return state
            if self.expired():
                return "timeout"
            self.sleep(self.poll)


def _started_after(step: dict, previous: dict) -> bool:
    if not step.get("started_at"):
        return False
    if not previous.get("finished_at"):
        return True
    return datetime.fromisoformat(step["started_at"]) >= datetime.fromisoformat(previous["finished_at"])
