"""The one next action of a release, and why the steps after it wait.

The plan page shows it (`data-next`), every success message in the admin ends with it, and the
commands end theirs with its command form. The rules, in order:

1. Nothing left (every step succeeded or skipped): no action; the release is complete.
2. A step waits for a two-person approval: approve it (another PROD release manager).
3. A step is running: wait for it (and its stage); after it, the action that follows.
4. A step is paused: at its canary, continue; with failed sites, retry them; else resume.
5. The first step not done failed with failed sites: retry them.
6. It is the finalize gate: finalize (record the tag and commit).
7. Otherwise: launch the stage of its environment, naming the steps the stage reaches.

Steps are read in segments: a run of steps of one environment up to a manual gate (what a stage
launch reaches), and the finalize gate alone. The segment after the next one is what "opens when"
the next one has succeeded; the rest is the order after that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .launchability import PlanFacts, describe, launch_check
from .models import ReleasePlan, StepRun
from .states import CANARY_WAITING, DONE, MANUAL_KINDS, StepKind, StepState
from .wording import spans


@dataclass
class NextAction:
    kind: str  # done | approve | wait | continue | retry | resume | finalize | launch_stage
    text: str = ""  # "Launch stage TEST — steps 5–6" ('' when nothing is left)
    why: str = ""  # "Finalize opens when TEST steps 5–6 have succeeded."
    then: str = ""  # "After that: DEV step 8 → TEST steps 9–11 → PROD steps 12–14."
    command: str = ""  # the same action from the command line
    step: StepRun | None = None  # the step the action is about
    stage: bool = False  # the action launches a stage (from `step`)
    after: str = ""  # while waiting: the action once the running work has succeeded
    after_command: str = ""
    blocked: str = ""  # the action cannot be taken yet (e.g. another release holds the environment)
    segments: list = field(default_factory=list)


def segments(steps: list[StepRun]) -> list[list[StepRun]]:
    """The steps not done yet, as a stage launch reaches them: one environment up to a gate."""
    runs: list[list[StepRun]] = []
    key = None
    for step in sorted(steps, key=lambda s: s.number):
        mine = ("gate", step.number) if step.kind in MANUAL_KINDS else ("env", step.environment_id)
        if mine != key:
            runs.append([])
            key = mine
        runs[-1].append(step)
    return [[s for s in run if s.state not in DONE] for run in runs if any(s.state not in DONE for s in run)]


def label(segment: list[StepRun]) -> str:
    """ "stage TEST — steps 9–11", "finalize (step 7)"."""
    head = segment[0]
    if head.kind == StepKind.FINALIZE:
        return f"finalize (step {head.number})"
    if head.kind == StepKind.GIT_BRANCH:
        return f"record the release branch (step {head.number})"
    return f"stage {head.environment} — {spans(s.number for s in segment)}"


def _segment_action(plan: ReleasePlan, segment: list[StepRun]) -> tuple[str, str]:
    """What starting a segment means, as text and as a command."""
    head = segment[0]
    if head.kind == StepKind.FINALIZE:
        return (
            f"Finalize: record the release's tag and commit (step {head.number})",
            f"release finalize {plan.version} --tag TAG --commit SHA --user NAME",
        )
    return (
        f"Launch stage {head.environment} — {spans(s.number for s in segment)}",
        f"release launch {plan.version} --stage {head.environment} --user NAME",
    )


def next_action(plan: ReleasePlan, facts: PlanFacts | None = None) -> NextAction:
    facts = facts or PlanFacts.load(plan)
    segs = segments(facts.steps)
    if not segs:
        return NextAction("done", why=f"Every step is done: release {plan.version} is complete.")
    head = segs[0][0]
    action = _action(plan, facts, segs, head)
    action.segments = segs
    rest = segs[1:]
    if rest and action.kind != "wait":
        opens = label(rest[0])
        verb = "has" if len(segs[0]) == 1 else "have"
        action.why = (
            action.why or f"{opens[0].upper()}{opens[1:]} opens when {describe(segs[0])} {verb} succeeded."
        )
        if len(rest) > 1:
            action.then = "After that: " + " → ".join(label(s) for s in rest[1:]) + "."
    return action


def _action(plan: ReleasePlan, facts: PlanFacts, segs, head: StepRun) -> NextAction:
    version, env = plan.version, head.environment
    where = f"step {head.number} on {env}" if env else f"step {head.number}"
    request = facts.waiting.get(head.pk)
    if request is not None:
        return NextAction(
            "approve",
            f"Approve the {request.what} of {where}",
            why=f"{env} requires two people: request #{request.pk} by {request.requested_by_username} "
            "waits for another PROD release manager.",
            command=f"release approve {version} --step {head.number} --user NAME",
            step=head,
        )
    if head.state == StepState.RUNNING:
        return _waiting(plan, segs, head)
    failed = head.counts()["failed"] if head.state in (StepState.PAUSED, StepState.FAILED) else 0
    if head.state == StepState.PAUSED:
        if (head.result or {}).get("canary") == CANARY_WAITING:
            return NextAction(
                "continue",
                f"Continue past the canary — {where}",
                why="Its first batch is verified; the other batches wait for an operator.",
                command=f"release resume {version} --user NAME",
                step=head,
            )
        if failed:
            return _retry(version, head, where, failed)
        return NextAction(
            "resume",
            f"Resume {where} (or abort it)",
            why=f"It is paused: {head.message}" if head.message else "It is paused.",
            command=f"release resume {version} --user NAME",
            step=head,
        )
    if head.state == StepState.FAILED and failed:
        return _retry(version, head, where, failed)
    text, command = _segment_action(plan, segs[0])
    if head.kind == StepKind.FINALIZE:
        return NextAction("finalize", text, command=command, step=head)
    action = NextAction("launch_stage", text, command=command, step=head, stage=True)
    if head.state in (StepState.FAILED, StepState.ABORTED):
        action.why = f"Step {head.number} {head.state}" + (f": {head.message}" if head.message else ".")
    refusal = launch_check(head, facts)
    if refusal is not None and refusal.code in ("busy", "selector"):
        action.blocked = refusal.message
        action.why = f"It cannot start yet: {refusal.message}."
    return action


def _retry(version: str, head: StepRun, where: str, failed: int) -> NextAction:
    return NextAction(
        "retry",
        f"Retry the failed sites of {where} ({failed}), or skip or abort it",
        why=f"It is {head.state}: {head.message}" if head.message else f"It is {head.state}.",
        command=f"release retry-failed {version} --step {head.number} --user NAME",
        step=head,
    )


def _waiting(plan: ReleasePlan, segs, head: StepRun) -> NextAction:
    env = head.environment
    segment = segs[0]
    queued = segment[1:] if head.continue_stage else []
    text = f"Wait: step {head.number} is running on {env}"
    if queued:
        text += f" (stage {env}: {spans(s.number for s in queued)} follow{'s' if len(queued) == 1 else ''})"
    # What comes once the running work has succeeded.
    after_segments = segs[1:] if head.continue_stage or len(segment) == 1 else [segment[1:], *segs[1:]]
    action = NextAction(
        "wait",
        text,
        why="This page updates itself; pause or abort it on its row.",
        command=f"release status {plan.version}",
        step=head,
    )
    if after_segments:
        after, command = _segment_action(plan, after_segments[0])
        action.after, action.after_command = after, command
        if len(after_segments) > 1:
            action.then = "After that: " + " → ".join(label(s) for s in after_segments[1:]) + "."
    return action


def next_sentence(plan: ReleasePlan) -> str:
    """The end of an admin success message: "Next: launch stage TEST — steps 5–6."."""
    return _next_in_words(
        plan,
        lambda action: ("the plan page updates itself", _lowered(action.after), _lowered(action.text), "."),
    )


def next_command(plan: ReleasePlan) -> str:
    """The end of a command's output: "Next: release launch 2.8.5 --stage TEST --user NAME"."""
    return _next_in_words(plan, lambda action: (action.command, action.after_command, action.command, ""))


def _next_in_words(plan: ReleasePlan, words) -> str:
    """The next action as one medium says it: `words(action)` gives how to follow a running step,
    what comes after it, what to do otherwise, and how the sentence ends."""
    action = next_action(plan)
    if action.kind == "done":
        return action.why
    follow, after, what, end = words(action)
    if action.kind == "wait":
        then = f"; then {after}" if after else ""
        return f"Next: wait for step {action.step.number} to finish ({follow}){then}{end}"
    return f"Next: {what}{end}"


def _lowered(text: str) -> str:
    return text[:1].lower() + text[1:]
