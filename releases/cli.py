"""Helpers shared by `manage.py release` and `manage.py environment`: refusals, JSON output,
launch confirmation and waiting for a step (or a stage) to end. Whether a launch may start is
`services.check_launch` (`releases.launchability`), the admin's check too. Previews and progress
lines are worded by portal_cli.text, so `manage.py release` and the `portal` command say the same."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from portal_cli.text import describe_preview, progress_line
from portal_cli.waiting import Polling
from portal_cli.waiting import Result as WaitResult

from atlas.errors import AtlasError

from . import services
from .db import with_database
from .models import EnvironmentMisconfigured, ReleasePlan, StepRun, TransitionRefused
from .states import DONE, StepState

# Exit codes besides 0 (done) and 2 (argparse: bad usage).
REFUSED = 1  # refused, failed, or the waited-for step did not succeed
TIMED_OUT = 3  # --timeout passed while the step was still running (it carries on)


@contextmanager
def refusals() -> Iterator[None]:
    """Turn the domain's refusals into CommandError, so the command exits non-zero with the reason."""
    try:
        yield
    except (services.ActionRefused, TransitionRefused, EnvironmentMisconfigured) as exc:
        raise CommandError(str(exc), returncode=REFUSED) from None
    except AtlasError as exc:
        raise CommandError(f"Atlas error: {exc}", returncode=REFUSED) from None
    except ValidationError as exc:
        raise CommandError("; ".join(exc.messages), returncode=REFUSED) from None


def refuse_unstorable(options: dict) -> None:
    """Refuse text no database can store (PostgreSQL rejects NUL characters) before any query,
    naming the argument: otherwise a NUL in --user or VERSION ends in a DataError traceback."""
    for name, value in options.items():
        if isinstance(value, str) and "\x00" in value:
            label = name.upper() if name in ("version", "name") else "--" + name.replace("_", "-")
            raise CommandError(f"{label} contains a NUL character", returncode=2)


def emit_json(stdout, document) -> None:
    """The one JSON document a `--json` invocation prints on stdout."""
    stdout.write(json.dumps(document, indent=2, default=str))


def note(stderr, message: str) -> None:
    """A line for the operator on stderr, unstyled (Django paints stderr as an error by default)."""
    stderr.write(message, style_func=lambda text: text)


def get_plan(version: str) -> ReleasePlan:
    plan = ReleasePlan.objects.filter(version=version).first()
    if plan is None:
        known = ", ".join(ReleasePlan.objects.values_list("version", flat=True)[:10]) or "none yet"
        raise CommandError(f"no release {version!r} (known: {known})", returncode=REFUSED)
    return plan


# -- confirmation --------------------------------------------------------------------------------


def confirm_launch(steps: list[StepRun], previews: list[dict], stdin, stderr) -> None:
    """Show the blast radius and ask; a protected environment must be typed. Raise unless confirmed."""
    for preview in previews:
        for line in describe_preview(preview):
            note(stderr, line)
    environment = steps[0].environment
    if environment is not None and environment.protected:
        note(stderr, f"{environment.name} is a protected environment.")
        answer = ask(stdin, stderr, f"Type {environment.name} to proceed: ")
        if answer != environment.name:
            # As the admin says it: what was typed, and that nothing happened.
            typed = f"you typed {answer!r}" if answer else "you typed nothing"
            raise CommandError(
                f"{environment.name} is protected: type its name exactly to confirm ({typed}). "
                "Nothing was launched.",
                returncode=REFUSED,
            )
        return
    if ask(stdin, stderr, "Proceed? [y/N] ").lower() not in ("y", "yes"):
        raise CommandError("not confirmed: nothing was launched", returncode=REFUSED)


def require_terminal(stdin, what: str = "launch", review: str = "`release preview`") -> None:
    if not (hasattr(stdin, "isatty") and stdin.isatty()):
        raise CommandError(
            f"refusing to {what} without confirmation: stdin is not a terminal "
            f"(review {review}, then pass --yes)",
            returncode=REFUSED,
        )


def ask(stdin, stderr, prompt: str) -> str:
    stderr.write(prompt, style_func=lambda text: text, ending="")
    stderr.flush()
    return stdin.readline().strip()


# -- waiting -------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class StepWaiter(Polling):
    """Poll the database until a launched step leaves `running`; for a stage, follow the steps the
    engine launches next (`services.continue_stage`) in the same environment."""

    poll: float = 0.5
    unclaimed_warning: float = 20.0

    def follow(self, step: StepRun, *, stage: bool) -> WaitResult:
        self.start()
        followed = [step]
        while True:
            ended = self._until_not_running(step)
            if ended is not None:
                return WaitResult(followed, False, ended, timed_out=True)
            if step.state != StepState.SUCCEEDED:
                reason = f": {step.message}" if step.message else ""
                return WaitResult(followed, False, f"step {step.number} ended {step.state}{reason}")
            if not stage:
                return WaitResult(followed, True)
            following, problem, timed_out = self._continuation(step)
            if following is None:
                return WaitResult(followed, not problem, problem, timed_out=timed_out)
            followed.append(following)
            step = following

    def _until_not_running(self, step: StepRun) -> str | None:
        """Wait for the step to leave `running`; return a timeout message if the deadline passes."""
        started, last_line, last_at, warned = self.clock(), None, None, False
        while True:
            line = with_database(lambda: _refreshed_line(step), "following the step")
            now = self.clock()
            if line != last_line and (
                last_at is None or step.state != StepState.RUNNING or now - last_at >= self.quiet_every
            ):
                self.report(line)
                last_line, last_at = line, now
            if step.state != StepState.RUNNING:
                return None
            if not warned and not step.lease_owner and now - started >= self.unclaimed_warning:
                self.report(f"no worker has picked up step {step.number} yet: is a Celery worker running?")
                warned = True
            if self.expired():
                return (
                    f"timed out after {self.timeout:g}s: step {step.number} is still running "
                    "(it carries on; follow it with `release status`)"
                )
            self.sleep(self.poll)

    def _continuation(self, step: StepRun) -> tuple[StepRun | None, str, bool]:
        """The stage step the engine launched after `step` (it may have ended already), or None with
        '' when the stage is complete, or None with the reason it stopped early; and whether the
        reason is our own timeout."""
        chain = with_database(lambda: step.stage_chain()[1:], "following the stage")
        if not chain:
            return None, "", False
        following, since = chain[0], self.clock()
        while True:
            with_database(following.refresh_from_db, "following the stage")
            if _started_after(following, step):
                return following, "", False
            # services.continue_stage launches only the very next step, and not one already done.
            if following.state in DONE or self.clock() - since >= self.grace:
                break
            if self.expired():
                return (
                    None,
                    f"timed out after {self.timeout:g}s waiting for step {following.number} to start",
                    True,
                )
            self.sleep(self.poll)
        left = [s.number for s in chain if s.state not in DONE]
        if not left:
            return None, "", False
        return (
            None,
            (
                f"the stage stopped after step {step.number}: step {left[0]} was not launched "
                "(see the audit trail; launch it with `release launch`)"
            ),
            False,
        )


def _started_after(step: StepRun, previous: StepRun) -> bool:
    if step.started_at is None:
        return False
    return previous.finished_at is None or step.started_at >= previous.finished_at


def _refreshed_line(step: StepRun) -> str:
    step.refresh_from_db()
    return _progress_line(step)


def _progress_line(step: StepRun) -> str:
    """The line `portal --wait` prints for the step's document (portal_cli.text), read from the row."""
    counts = step.counts()
    running = step.state == StepState.RUNNING
    if not running and step.message and (step.result or {}).get("counts") == counts:
        # The worker's closing message already gives these counts (and what else it found): once.
        env = step.environment.name if step.environment else "-"
        return f"step {step.number} [{env}] {step.kind}: {step.state} ({step.message})"
    document = {
        "number": step.number,
        "environment": step.environment.name if step.environment else None,
        "kind": step.kind,
        "state": step.state,
        "counts": counts,
        "message": step.message,
        "liveness": step.liveness() if running else "",
        "activity": step.activity,
    }
    return progress_line(document)


def wait_for_approval(step: StepRun, request, report, *, timeout: float | None, poll: float = 0.5) -> str:
    """`launch --wait` on a two-person environment: wait until the request is decided; return
    'approved' (the step is then followed as usual), 'withdrawn', or 'timeout'."""
    report(f"step {step.number}: waiting for another user to approve (release approve --step {step.number})")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with_database(request.refresh_from_db, "waiting for the approval")
        if request.state != "pending":
            with_database(step.refresh_from_db, "waiting for the approval")
            report(f"step {step.number}: {request.state} by {request.decided_by_username}")
            return request.state
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        time.sleep(poll)
