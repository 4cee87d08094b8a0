"""Whether a step can be launched (or the release finalized) now, and why not.

One answer for every caller: the plan page offers a `Launch` control only where there is no
refusal and explains the others in a line, the launch confirmation states the refusal before it
asks for anything, `release launch` refuses before its question, and `services.launch` refuses
the same way (the model's guarded transition still has the last word under concurrency).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import InvalidGroupSelector, LaunchRequest, ReleasePlan, StepRun, UpdateGroup
from .models.plan import manual_gate
from .states import ACTIVE, DONE, LAUNCHABLE, MANUAL_KINDS, StepKind, StepState
from .wording import spans

SITE_KINDS = (StepKind.DELETE_SITES, StepKind.UPDATE_SITES)


@dataclass(frozen=True)
class Refusal:
    """Why not: `code` for callers that decide, `message` in full (services, commands, the
    confirmation page), `short` for the plan page's line next to the step."""

    code: str  # manual | state | waiting | queued | earlier | busy | selector | finalize_*
    message: str
    short: str

    def __str__(self) -> str:
        return self.message


@dataclass
class PlanFacts:
    """What the checks read, loaded once per page or command in a fixed number of queries."""

    steps: list[StepRun]
    busy: list[StepRun]  # active steps of every plan: each holds its environment
    waiting: dict[int, LaunchRequest]  # pending two-person requests of this plan, by step id
    _groups: dict[tuple[int, int], list[UpdateGroup]] | None = None

    @property
    def groups(self) -> dict[tuple[int, int], list[UpdateGroup]]:
        """Enabled update groups by (environment id, step number), read once when first needed
        (only a site step with nothing else in its way has its selectors checked)."""
        if self._groups is None:
            environments = {s.environment_id for s in self.steps if s.environment_id}
            self._groups = {}
            enabled = UpdateGroup.objects.filter(environment__in=environments).enabled()
            for group in enabled.select_related("environment").order_by("position", "id"):
                self._groups.setdefault((group.environment_id, group.step_number), []).append(group)
        return self._groups

    @classmethod
    def load(cls, plan: ReleasePlan, steps: list[StepRun] | None = None) -> PlanFacts:
        """`steps`: the plan's steps when the caller has loaded them already (in order)."""
        if steps is None:
            steps = list(plan.steps.select_related("environment").order_by("number"))
        busy = list(StepRun.objects.filter(state__in=ACTIVE).select_related("plan", "environment"))
        waiting = {
            r.step_id: r
            for r in LaunchRequest.objects.filter(step__plan=plan, state=LaunchRequest.State.PENDING)
        }
        return cls(steps, busy, waiting)


def describe(steps: list[StepRun]) -> str:
    """Steps by environment, in order: "DEV steps 2–4 and TEST steps 5–6", "step 7 (finalize)"."""
    runs: list[tuple[str, list[int]]] = []
    for step in sorted(steps, key=lambda s: s.number):
        env = step.environment.name if step.environment else ""
        if runs and runs[-1][0] == env:
            runs[-1][1].append(step.number)
        else:
            runs.append((env, [step.number]))
    parts = [f"{env} {spans(numbers)}" if env else f"{spans(numbers)} (finalize)" for env, numbers in runs]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def launch_check(step: StepRun, facts: PlanFacts | None = None) -> Refusal | None:
    """Why launching `step` (or the stage from it) would be refused now; None when it would not."""
    facts = facts or PlanFacts.load(step.plan)
    n = step.number
    if step.kind in MANUAL_KINDS:
        return Refusal("manual", manual_gate(n), "")
    if step.state not in LAUNCHABLE:
        done = step.state in DONE
        after = "nothing is left to launch there" if done else "it is already launched"
        return Refusal("state", f"step {n} is no longer launchable (it is {step.state}): {after}", "")
    request = facts.waiting.get(step.pk)
    if request is not None:
        message = (
            f"step {n} already waits for an approval (request #{request.pk}, {request.what} "
            f"by {request.requested_by_username}): approve or withdraw it first"
        )
        return Refusal("waiting", message, f"Waits for an approval (request #{request.pk})")
    earlier = [s for s in facts.steps if s.number < n and s.state not in DONE]
    queued = _queued_behind(step, earlier, facts.steps)
    if queued:
        ahead = spans(s.number for s in queued)
        verb = "has" if len(queued) == 1 else "have"
        env = step.environment
        message = (
            f"step {n} cannot start: it is queued in the running {env} stage and starts by itself "
            f"once {ahead} {verb} succeeded"
        )
        return Refusal("queued", message, f"Queued in stage {env}: starts by itself after {ahead}")
    blockers = step.blockers(steps=facts.steps, busy=facts.busy)
    if blockers:
        message = f"step {n} cannot start: " + "; ".join(blockers)
        if earlier:
            return Refusal("earlier", message, f"Waits for {spans(s.number for s in earlier)}")
        return Refusal("busy", message, blockers[0][0].upper() + blockers[0][1:])
    refusal = selector_refusal(step, facts)
    if refusal:
        return Refusal("selector", refusal, f"An update group's selector is refused: {refusal}")
    return None


def launch_refusal(step: StepRun, facts: PlanFacts | None = None) -> str:
    """`launch_check` as a sentence ('' when the launch would go ahead)."""
    refusal = launch_check(step, facts)
    return refusal.message if refusal else ""


def _queued_behind(step: StepRun, earlier: list[StepRun], steps: list[StepRun]) -> list[StepRun]:
    """The not-done steps ahead of `step` in a running stage that will launch it (empty if none)."""
    if not earlier or not earlier[0].continue_stage or earlier[0].state not in ACTIVE:
        return []
    head = earlier[0]
    between = [s for s in steps if head.number < s.number <= step.number]
    if head.environment_id != step.environment_id or any(
        s.environment_id != head.environment_id or s.kind in MANUAL_KINDS for s in between
    ):
        return []
    return earlier


def selector_refusal(step: StepRun, facts: PlanFacts | None = None) -> str:
    """Why a site step's selectors may not be sent to Atlas ('' when they may): checked at launch,
    so a selector saved behind the admin's validation is refused before the step starts."""
    if step.kind not in SITE_KINDS:
        return ""
    if facts is None:
        groups = UpdateGroup.objects.for_step(step).enabled().select_related("environment")
    else:
        groups = facts.groups.get((step.environment_id, step.number), [])
    for group in groups:
        try:
            group.checked_selector()
        except InvalidGroupSelector as exc:
            return str(exc)
    return ""


def finalize_check(step: StepRun, facts: PlanFacts) -> Refusal | None:
    """Why the finalize gate cannot be recorded now (the rules `services.finalize` applies to the
    steps around it); None when it can (again, as a correction, until a later step has run)."""
    earlier = [s for s in facts.steps if s.number < step.number and s.state not in DONE]
    if earlier:
        verb = "has" if len(earlier) == 1 else "have"
        text = f"Finalize opens when {describe(earlier)} {verb} succeeded (or been skipped)"
        return Refusal("finalize_earlier", f"cannot finalize yet: {text[0].lower()}{text[1:]}", text)
    later = [
        s
        for s in facts.steps
        if s.number > step.number
        and (s.started_at is not None or s.state not in (StepState.PENDING, StepState.SKIPPED))
    ]
    if later:
        text = f"The final commit is in use since step {later[0].number} ran: it can no longer change"
        return Refusal("finalize_used", text, text)
    return None
