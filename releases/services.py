"""Operations on release plans, shared by the admin and `manage.py release`.

Each operation checks the acting user's permission, changes state through the model's guarded
transitions, enqueues work only after the transaction commits, and leaves an audit event —
for refusals too.
"""

from __future__ import annotations

import logging
import uuid

from celery import current_app
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from . import channel as channels
from . import notify, roles
from .models import (
    AuditEvent,
    Environment,
    InvalidGroupSelector,
    LaunchRequest,
    ReleasePlan,
    StepRun,
    TransitionRefused,
    UpdateGroup,
)
from .models.plan import SHA_VALIDATOR, VERSION_VALIDATOR
from .runbook import STEPS
from .states import ACTIVE, CANARY_WAITING, DONE, LAUNCHABLE, MANUAL_KINDS, StepKind, StepState

logger = logging.getLogger(__name__)
RUN_STEP_TASK = "releases.tasks.run_step"

PERMISSIONS = {
    "create_plan": "releases.add_releaseplan",
    "launch": "releases.launch_step",
    "pause": "releases.launch_step",
    "resume": "releases.launch_step",
    "abort": "releases.launch_step",
    "retry_failed": "releases.launch_step",
    "skip": "releases.launch_step",
    "finalize": "releases.finalize_release",
    "environment_set": "releases.change_environment",
    # The second person of the two-person rule holds the protected permission.
    "approve": "releases.launch_protected",
}


class ActionRefused(Exception):
    """The action was not carried out; the message says why (and an audit event records it).
    `errors`: every problem of a form's input at once, as (field, message) pairs."""

    def __init__(self, message: str, errors: list[tuple[str | None, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def resolve_user(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None or not user.is_active or not user.is_staff:
        AuditEvent.record(
            "resolve_user",
            username=username or "?",
            outcome=AuditEvent.Outcome.REFUSED,
            message="unknown, inactive or non-staff user",
        )
        raise ActionRefused(f"unknown user {username!r} (it must be an active staff account)")
    return user


# Pause is an emergency brake: any release manager may pull it on any environment (audited).
# Everything else that acts on a protected environment's step needs its permission too.
PROTECTED_ACTIONS = ("launch", "abort", "resume", "retry_failed", "skip", "environment_set")
# On a two-person environment these are only requests until another person approves them: each
# sends writes to Atlas again. Pause and abort never need two people.
TWO_PERSON_ACTIONS = ("launch", "resume", "retry_failed")


# What a refusal says the user may not do ("viewer may not launch steps: ask a release manager").
ACTION_WORDS = {
    "create_plan": "create release plans",
    "launch": "launch steps",
    "pause": "pause steps",
    "resume": "resume steps",
    "abort": "abort steps",
    "retry_failed": "retry failed sites",
    "skip": "skip steps",
    "finalize": "finalize releases",
    "environment_set": "change environment settings",
    "approve": "approve requests under the two-person rule",
}


def permission_refusal(user, action: str, environment=None) -> str:
    """Why `user` may not do `action` (on `environment`): '' when they may. Audits nothing:
    the admin asks it to decide which controls to offer, `authorize` to refuse."""
    missing = [] if user.has_perm(PERMISSIONS[action]) else [PERMISSIONS[action]]
    # Acting on a protected environment (or changing its protection) needs the protected
    # permission too, or anyone with change_environment could unprotect PROD and then launch there.
    if action in PROTECTED_ACTIONS and environment is not None and environment.protected:
        if not user.has_perm("releases.launch_protected"):
            missing.append("releases.launch_protected")
    if not missing:
        return ""
    where = (
        f" on the protected environment {environment.name}"
        if environment is not None and ("releases.launch_protected" in missing and action != "approve")
        else ""
    )
    return f"{user.get_username()} may not {ACTION_WORDS[action]}{where}: {roles.ask(*missing)}"


def authorize(user, action: str, *, plan=None, step=None, environment=None, parameters=None) -> None:
    """Raise ActionRefused (and audit it) unless `user` may do `action` (there)."""
    environment = environment or (step.environment if step else None)
    refusal = permission_refusal(user, action, environment)
    if refusal:
        _refuse(
            refusal,
            action,
            user=user,
            plan=plan,
            step=step,
            environment=environment,
            parameters=parameters,
        )


def _refuse(message: str, action: str, **where) -> None:
    AuditEvent.record(action, outcome=AuditEvent.Outcome.REFUSED, message=message, **where)
    raise ActionRefused(message)


def typed(value: str) -> str:
    """What was typed, in words, for a message: "39 characters", "40 characters, upper case"."""
    details = [f"{len(value)} character{'s' if len(value) != 1 else ''}"]
    if any(c in "ABCDEF" for c in value):
        details.append("upper case")
    others = sorted({c for c in value.lower() if c not in "0123456789abcdef"})
    if others:
        details.append("not hexadecimal: " + " ".join(repr(c) for c in others[:5]))
    return ", ".join(details)


def sha_problem(commit: str, what: str = "commit") -> str:
    """Why `commit` is not a full SHA ('' when it is), saying what was typed."""
    try:
        SHA_VALIDATOR(commit)
    except ValidationError:
        return f"{what} {commit!r} {SHA_VALIDATOR.message} ({typed(commit)})"
    return ""


def plan_problems(
    version: str, commit: str, branch: str, git_url: str, profile: str
) -> list[tuple[str, str]]:
    """Every problem of a new plan's input at once, as (form field, message)."""
    problems = []
    if not version:
        problems.append(("version", "the version is empty"))
    else:
        try:
            VERSION_VALIDATOR(version)
        except ValidationError:
            problems.append(("version", f"version {version!r} {VERSION_VALIDATOR.message}"))
        if ReleasePlan.objects.filter(version=version).exists():
            problems.append(("version", f"release {version} already exists"))
    if not commit:
        problems.append(("release_commit", "the release commit is empty"))
    elif sha_problem(commit):
        problems.append(("release_commit", sha_problem(commit)))
    columns = {"version": version, "release_branch": branch, "git_url": git_url, "profile_name": profile}
    fields = {
        "version": "version",
        "release_branch": "branch",
        "git_url": "git_url",
        "profile_name": "profile",
    }
    for column, value in columns.items():
        limit = ReleasePlan._meta.get_field(column).max_length
        if len(value) > limit:
            what = column.replace("_", " ").replace("git url", "git URL")
            problems.append((fields[column], f"the {what} has {len(value)} characters, more than {limit}"))
    if ".git" not in git_url:
        problems.append(("git_url", f"git URL {git_url!r} must contain .git (Atlas refuses it otherwise)"))
    return problems


def create_plan(
    version: str, *, commit: str, user, branch: str = "", git_url: str = "", profile: str = "express"
) -> ReleasePlan:
    params = {"version": version, "commit": commit, "branch": branch, "git_url": git_url, "profile": profile}
    authorize(user, "create_plan", parameters=params)
    try:
        git_url = git_url or "https://github.com/CuBoulder/express.git"
        branch = branch or f"release/{version}"
        problems = plan_problems(version, commit, branch, git_url, profile)
        if problems:
            raise ActionRefused("; ".join(message for _, message in problems), errors=problems)
        environments = {e.name: e for e in Environment.objects.all()}
        missing = {d.environment for d in STEPS if d.environment} - environments.keys()
        if missing:
            raise ActionRefused(
                f"environments {', '.join(sorted(missing))} do not exist: run `manage.py loadrunbook`"
            )
    except ActionRefused as exc:
        AuditEvent.record(
            "create_plan", user=user, outcome=AuditEvent.Outcome.REFUSED, parameters=params, message=str(exc)
        )
        raise
    with transaction.atomic():
        plan = ReleasePlan.objects.create(
            version=version,
            release_commit=commit,
            git_url=git_url,
            release_branch=branch,
            profile_name=profile,
            created_by=user,
            created_by_username=user.get_username(),
        )
        StepRun.objects.bulk_create(
            StepRun(
                plan=plan,
                number=d.number,
                environment=environments.get(d.environment),
                kind=d.kind,
                title=d.title,
                params=dict(d.params),
            )
            for d in STEPS
        )
        plan.steps.get(number=1).record_manual(user, message=f"branch {plan.release_branch} at {commit}")
        AuditEvent.record("create_plan", user=user, plan=plan, parameters=params)
    return plan


def get_step(plan: ReleasePlan, number: int) -> StepRun:
    step = plan.steps.select_related("environment").filter(number=number).first()
    if step is None:
        raise ActionRefused(f"release {plan.version} has no step {number} (steps are 1–{len(STEPS)})")
    return step


def next_step(plan: ReleasePlan, environment: str | None = None) -> StepRun:
    steps = plan.steps.select_related("environment").exclude(state__in=DONE).order_by("number")
    if environment:
        steps = steps.filter(environment__name=environment.upper())
    step = steps.first()
    if step is None:
        where = f" on {environment.upper()}" if environment else ""
        raise ActionRefused(f"release {plan.version} has no remaining step{where}")
    return step


def launch(
    step: StepRun, user, *, stage: bool = False, via: str = "launch", confirmed: dict | None = None
) -> StepRun:
    """Launch a step (and, with `stage`, the environment's following steps as each succeeds).

    `confirmed` is what the operator saw and confirmed, `{step number: {batch name: sites}}`:
    it goes into the audit event, and a site step whose snapshot finds more sites in a batch than
    confirmed pauses before its first write. Launching and enqueueing are one decision: if the
    broker does not take the task, nothing is launched (the step stays as it was).
    """
    params = {"step": step.number, "stage": stage, "via": via}
    if confirmed:
        params["confirmed"] = {str(number): counts for number, counts in confirmed.items()}
    authorize(user, "launch", plan=step.plan, step=step, parameters=params)
    refusal = _selector_refusal(step)
    if refusal:
        _refuse(refusal, "launch", user=user, step=step, parameters=params)
    if via == "launch" and step.environment is not None and step.environment.two_person:
        return request_action(step, user, "launch", stage=stage, confirmed=confirmed)  # run on approval
    try:
        with transaction.atomic():
            step.launch(user, continue_stage=stage)
            if confirmed is not None:
                _record_confirmed(step, confirmed, stage=stage)
            elif via != "stage":
                # Launched without a confirmation (`--yes`): an earlier launch's counts are not this one's.
                StepRun.objects.filter(pk=step.pk).update(confirmed_targets=None)
                step.confirmed_targets = None
            AuditEvent.record("launch", user=user, step=step, parameters=params)
            _enqueue(step, strict=via != "stage")
    except TransitionRefused as exc:
        _refuse(str(exc), "launch", user=user, step=step, parameters=params)
    except BrokerUnavailable as exc:
        step.refresh_from_db()
        _refuse(
            f"broker unreachable: {exc}; nothing was launched",
            "launch",
            user=user,
            step=step,
            parameters=params,
        )
    return step


def request_action(
    step: StepRun, user, action: str = "launch", *, stage: bool = False, confirmed: dict | None = None
) -> StepRun:
    """The first half of an operation under the two-person rule (a launch, a resume, a retry of
    failed sites): recorded and audited; nothing runs until another user with the protected
    permission approves that very request (`approvals.approve`)."""
    audit_action = f"{action}_request"
    params = {"step": step.number, "stage": stage}
    if confirmed:
        params["confirmed"] = {str(number): counts for number, counts in confirmed.items()}
    refusal = action_refusal(step, action)
    if refusal:
        _refuse(refusal, audit_action, user=user, step=step, parameters=params)
    waiting = f"step {step.number} already waits for an approval"
    if step.launch_requests.filter(state=LaunchRequest.State.PENDING).exists():
        _refuse(waiting, audit_action, user=user, step=step, parameters=params)
    via = channels.current()
    try:
        with transaction.atomic():
            request = LaunchRequest.objects.create(
                step=step,
                action=action,
                stage=stage,
                confirmed=params.get("confirmed"),
                requested_by=user,
                requested_by_username=user.get_username(),
                requested_channel=via.name,
                requested_account=via.account,
            )
            AuditEvent.record(
                audit_action,
                user=user,
                step=step,
                parameters={**params, "request": request.pk},
                message=f"{step.environment} requires two people: waiting for another user's approval",
            )
    except IntegrityError:  # another request got there first (one pending request per step)
        _refuse(waiting, audit_action, user=user, step=step, parameters=params)
    # The approvers learn that a request waits (outside the transaction: an HTTP post).
    notify.step_event(
        step,
        f"{request.what} requested by {request.requested_by_username} (request #{request.pk}): "
        f"{step.environment} requires two people, waiting for another PROD release manager's approval",
    )
    return step


def request_launch(step: StepRun, user, *, stage: bool = False, confirmed: dict | None = None) -> StepRun:
    return request_action(step, user, "launch", stage=stage, confirmed=confirmed)


def action_refusal(step: StepRun, action: str = "launch") -> str:
    """Why `action` on `step` would be refused now ('' if it would not): asked before recording a
    request, so a request that could never run is not left waiting for an approver."""
    if action == "resume":
        return (
            "" if step.state == StepState.PAUSED else f"step {step.number} is not paused (it is {step.state})"
        )
    if action == "retry_failed":
        if step.state not in (StepState.PAUSED, StepState.FAILED):
            return f"step {step.number} is neither paused nor failed (it is {step.state})"
        return ""
    return _launch_refusal(step)


def _launch_refusal(step: StepRun) -> str:
    """Why a launch would be refused now ('' if it would not)."""
    if step.kind in MANUAL_KINDS:
        return f"step {step.number} is a manual gate: record it with `release finalize`"
    if step.state not in LAUNCHABLE:
        return f"step {step.number} is no longer launchable (it is {step.state})"
    blockers = step.blockers()
    if blockers:
        return f"step {step.number} cannot start: " + "; ".join(blockers)
    return _selector_refusal(step)


def _selector_refusal(step: StepRun) -> str:
    """Why a site step's selectors may not be sent to Atlas ('' when they may): checked at launch,
    so a selector saved behind the admin's validation is refused before the step starts."""
    if step.kind not in (StepKind.DELETE_SITES, StepKind.UPDATE_SITES):
        return ""
    groups = UpdateGroup.objects.filter(
        environment=step.environment_id, step_number=step.number, enabled=True
    )
    for group in groups.select_related("environment"):
        try:
            group.checked_selector()
        except InvalidGroupSelector as exc:
            return str(exc)
    return ""


def _record_confirmed(step: StepRun, confirmed: dict, *, stage: bool) -> None:
    """Keep each reached step's confirmed counts on the step itself (the engine compares). A site
    step the launch reaches but the confirmation does not show (its preview failed) confirmed no
    batch: each of its batches pauses it before its first write."""
    reached = step.stage_chain() if stage else [step]
    confirmed = dict(confirmed)
    for other in reached:
        if other.kind in (StepKind.DELETE_SITES, StepKind.UPDATE_SITES) and other.state not in DONE:
            if other.number not in confirmed and str(other.number) not in confirmed:
                confirmed[other.number] = {}
    for number, counts in confirmed.items():
        step.plan.steps.filter(number=int(number)).exclude(state__in=DONE).update(confirmed_targets=counts)
    if step.number in confirmed or str(step.number) in confirmed:
        step.confirmed_targets = confirmed.get(step.number, confirmed.get(str(step.number)))


def continue_stage(step: StepRun) -> StepRun | None:
    """After a stage step succeeds: launch the environment's next step, unless it is a gate."""
    later = (
        step.plan.steps.select_related("environment").filter(number__gt=step.number).exclude(state__in=DONE)
    )
    following = later.order_by("number").first()
    if following is None or following.environment_id != step.environment_id or following.kind in MANUAL_KINDS:
        return None
    user = step.launched_by
    if user is None:
        return None
    try:
        return launch(following, user, stage=True, via="stage")
    except ActionRefused:
        return None


def complete_step(step: StepRun, owner: str, outcome) -> str | None:
    """The worker's end of a step: record how it ended (audited) and, for a stage step that
    succeeded, launch the environment's next step in the same transaction, so an observer never
    sees the stage idle between two of its steps. Returns the end state, or None if this worker
    no longer held the step."""
    with transaction.atomic():
        if not step.finish(owner, outcome.state, outcome.message, outcome.result or None):
            return None
        AuditEvent.record(
            f"step_{step.state}",
            username="system",
            step=step,
            parameters={"owner": owner, "counts": step.counts()},
            message=step.message,
        )
        if step.state == StepState.SUCCEEDED and step.continue_stage:
            continue_stage(step)
    canary = step.state == StepState.PAUSED and (step.result or {}).get("canary") == CANARY_WAITING
    notify.step_event(step, "paused: the canary batch is verified, waiting for an operator to continue" if canary
                      else step.state)  # fmt: skip
    return step.state


def pause(plan: ReleasePlan, user) -> StepRun:
    return _request(plan, user, "pause", [StepState.RUNNING])


def abort(plan: ReleasePlan, user) -> StepRun:
    return _request(plan, user, "abort", list(ACTIVE))


def _request(plan: ReleasePlan, user, action: str, states) -> StepRun:
    step = plan.steps.select_related("environment").filter(state__in=states).order_by("number").first()
    authorize(user, action, plan=plan, step=step)
    if step is None:
        _refuse(
            f"release {plan.version} has no {' or '.join(states)} step to {action}",
            action,
            user=user,
            plan=plan,
        )
    try:
        step.request(action)
    except TransitionRefused as exc:
        _refuse(str(exc), action, user=user, step=step)
    AuditEvent.record(action, user=user, step=step)
    if action == "abort":
        _close_requests(step, user, "aborted")
    return step


def _close_requests(step: StepRun, user, why: str) -> None:
    """A step that was aborted or skipped leaves nothing waiting for approval: its pending request
    (a resume, a retry, a launch) is withdrawn, audited, so it neither runs later nor blocks a
    relaunch."""
    for request in step.launch_requests.filter(state=LaunchRequest.State.PENDING):
        closed = LaunchRequest.objects.filter(pk=request.pk, state=LaunchRequest.State.PENDING).update(
            state=LaunchRequest.State.WITHDRAWN,
            decided_by_username=user.get_username(),
            decided_at=timezone.now(),
        )
        if closed:
            AuditEvent.record(
                "withdraw",
                user=user,
                step=step,
                parameters={"request": request.pk, "action": request.action},
                message=f"request #{request.pk} ({request.what}) withdrawn: the step was {why}",
            )


def resume(plan: ReleasePlan, user, *, approved: bool = False) -> StepRun:
    step = plan.steps.select_related("environment").filter(state=StepState.PAUSED).order_by("number").first()
    if step is None:
        _refuse(f"release {plan.version} has no paused step to resume", "resume", user=user, plan=plan)
    return resume_step(step, user, approved=approved)


def resume_step(step: StepRun, user, *, approved: bool = False) -> StepRun:
    return _resume(step, user, "resume", retry_failed=False, approved=approved)


def retry_failed(step: StepRun, user, *, approved: bool = False) -> StepRun:
    return _resume(step, user, "retry_failed", retry_failed=True, approved=approved)


def _resume(step: StepRun, user, action: str, *, retry_failed: bool, approved: bool) -> StepRun:
    """Resume (or retry the failed sites of) a step. On a two-person environment this is only a
    request, run when another person approves it (`approved`: the approval's own call)."""
    authorize(user, action, step=step)
    if not approved and step.environment is not None and step.environment.two_person:
        return request_action(step, user, action)
    try:
        with transaction.atomic():
            step.resume(retry_failed=retry_failed)
            AuditEvent.record(action, user=user, step=step)
            _enqueue(step)
    except TransitionRefused as exc:
        _refuse(str(exc), action, user=user, step=step)
    except BrokerUnavailable as exc:
        step.refresh_from_db()
        _refuse(f"broker unreachable: {exc}; nothing was resumed", action, user=user, step=step)
    return step


def skip(step: StepRun, user, reason: str) -> StepRun:
    authorize(user, "skip", step=step, parameters={"reason": reason})
    try:
        step.skip(user, reason)
    except TransitionRefused as exc:
        _refuse(str(exc), "skip", user=user, step=step, reason=reason)
    AuditEvent.record("skip", user=user, step=step, reason=reason)
    _close_requests(step, user, "skipped")
    return step


def finalize(plan: ReleasePlan, *, tag: str, commit: str, user) -> ReleasePlan:
    params = {"tag": tag, "commit": commit}
    authorize(user, "finalize", plan=plan, parameters=params)
    step = get_step(plan, 7)
    problems = []
    if not tag.strip():
        problems.append("the tag is empty")
    elif len(tag) > ReleasePlan._meta.get_field("final_tag").max_length:
        limit = ReleasePlan._meta.get_field("final_tag").max_length
        problems.append(f"the tag has {len(tag)} characters, more than {limit}")
    if sha_problem(commit):
        problems.append(sha_problem(commit))
    if commit == plan.release_commit:
        problems.append(
            "the final commit equals the release-branch commit (the --no-ff merge makes a new one)"
        )
    problems.extend(step.blockers())
    # Any step after the gate that was ever launched may have written to Atlas, whatever its
    # state now (a step skipped after an unanswered PATCH /code shows `skipped`).
    started = (
        plan.steps.filter(number__gt=step.number)
        .filter(Q(started_at__isnull=False) | ~Q(state__in=[StepState.PENDING, StepState.SKIPPED]))
        .order_by("number")
    )
    if started.exists():
        # The final commit is what DEV, TEST and PROD receive from step 8 on: changing it after
        # a write may have carried it to Atlas would make the record lie about what was deployed.
        first = started.first()
        problems.append(
            f"step {first.number} ({first.state}) has already run with the final commit "
            f"{plan.final_commit or '(none)'} and may have written it to Atlas: it can no longer change"
        )
    if problems:
        _refuse(
            "cannot finalize: " + "; ".join(problems), "finalize", user=user, step=step, parameters=params
        )
    if plan.final_commit:
        params["previous"] = {"tag": plan.final_tag, "commit": plan.final_commit}
    with transaction.atomic():
        updated = ReleasePlan.objects.filter(
            pk=plan.pk, final_tag=plan.final_tag, final_commit=plan.final_commit
        ).update(final_tag=tag, final_commit=commit)
        if updated == 1:
            plan.final_tag, plan.final_commit = tag, commit
            step.record_manual(user, message=f"tag {tag} at {commit}")
            AuditEvent.record("finalize", user=user, step=step, parameters=params)
    if updated != 1:
        _refuse("the release was finalized by someone else meanwhile: look again", "finalize", user=user,
                step=step, parameters=params)  # fmt: skip
    return plan


class BrokerUnavailable(Exception):
    """The task could not be handed to the broker."""


def _enqueue(step: StepRun, *, strict: bool = True) -> None:
    """Hand the step's task to the broker inside the caller's transaction: if the broker refuses
    it, the transaction (the launch, its audit event) rolls back. A worker that receives the task
    before the commit waits for it (`engine.execute`). With `strict=False` (a stage moving on
    from a worker) a broker failure is logged: the lease watchdog enqueues the step again."""
    task_id = str(uuid.uuid4())
    step.task_ids = [*step.task_ids, task_id][-50:]
    StepRun.objects.filter(pk=step.pk).update(task_ids=step.task_ids)
    try:
        current_app.send_task(
            RUN_STEP_TASK,
            args=(step.pk,),
            task_id=task_id,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:  # kombu raises OperationalError and friends, by transport
        if strict:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
        logger.warning("step %s: could not enqueue (%s); the watchdog will", step.pk, type(exc).__name__)


# -- configuration ---------------------------------------------------------------------------------

# Changing any of these on any environment needs the protected permission too: they decide where
# the portal sends which credentials, and whether PROD's protection applies at all. The name is
# one of them because it decides the environment's own variables (ATLAS_<NAME>_PASSWORD).
PROTECTED_SETTINGS = (
    "name",
    "api_url",
    "username",
    "password_env",
    "verify_tls",
    "protected",
    "slack_webhook_env",
    "two_person",
)


def weakenings(env: Environment, requested: dict) -> list[str]:
    """What in `requested` would weaken `env`'s protection, in words ("two_person on → off")."""
    found = []
    for field in ("two_person", "protected", "verify_tls", "verify", "canary"):
        if field in requested and getattr(env, field) and not requested[field]:
            found.append(f"{field} on → off")
    if "parallelism" in requested and (requested["parallelism"] or 0) > env.parallelism:
        found.append(f"parallelism {env.parallelism} → {requested['parallelism']}")
    if {"max_unverified", "parallelism"} & requested.keys():
        after = Environment(
            parallelism=requested.get("parallelism", env.parallelism),
            max_unverified=requested.get("max_unverified", env.max_unverified),
        ).unverified_limit()
        if after > env.unverified_limit():
            found.append(f"sites updating at once {env.unverified_limit()} → {after}")
    if {"failure_threshold_count", "failure_threshold_percent"} & requested.keys():
        old = (env.failure_threshold_count, env.failure_threshold_percent)
        new = (
            requested.get("failure_threshold_count", old[0]),
            requested.get("failure_threshold_percent", old[1]),
        )
        if _looser(old, new):
            found.append(f"failure threshold {_threshold_text(*old)} → {_threshold_text(*new)}")
    return found


def _looser(old: tuple, new: tuple) -> bool:
    """Whether threshold `new` (count, percent) lets more sites fail than `old` may: a higher
    count or percentage, no limit, or a change between a count and a percentage (not comparable)."""
    if old == new or old == (None, None):
        return False
    if new == (None, None):
        return True
    if old[0] is not None and new[0] is not None and new[1] is None and old[1] is None:
        return new[0] > old[0]
    if old[1] is not None and new[1] is not None and new[0] is None and old[0] is None:
        return new[1] > old[1]
    return True


def _threshold_text(count, percent) -> str:
    if count is not None:
        return f"{count} sites"
    return f"{percent:g}%" if percent is not None else "none"


def environment_change_refusal(user, env: Environment, requested: dict) -> str:
    """Why `user` may not make the `requested` changes to `env` as it is now ('' if they may).

    On a two-person environment, weakening its protection is reserved to superusers: otherwise
    one PROD release manager could turn the rule off, act alone, and turn it back on."""
    if env.two_person and not user.is_superuser:
        weaker = weakenings(env, requested)
        if weaker:
            return (
                f"{env.name} requires two people: weakening its protection ({', '.join(weaker)}) is "
                f"reserved to superusers, and {user.get_username()} is not one"
            )
    missing = [] if user.has_perm(PERMISSIONS["environment_set"]) else [PERMISSIONS["environment_set"]]
    why = []
    if env.protected or requested.get("protected"):
        why.append(f"{env.name} is protected" if env.protected else f"it would protect {env.name}")
    touched = [f for f in PROTECTED_SETTINGS if f in requested and requested[f] != getattr(env, f)]
    if touched:
        why.append(f"it changes {', '.join(touched)}")
    if why and not user.has_perm("releases.launch_protected"):
        missing.append("releases.launch_protected")
    if not missing:
        return ""
    because = f" ({'; '.join(why)})" if why and "releases.launch_protected" in missing else ""
    return f"{user.get_username()} may not change {env.name}'s settings{because}: {roles.ask(*missing)}"


def check_environment_change(user, env: Environment, requested: dict, *, via: str) -> None:
    """Raise ActionRefused (audited) unless `user` may make the `requested` changes to `env`."""
    refusal = environment_change_refusal(user, env, requested)
    if refusal:
        _refuse_environment(refusal, user, env, requested, via)


def change_environment(env: Environment, user, requested: dict, *, via: str) -> dict:
    """The one way an environment's settings change: `manage.py environment set` and the admin.

    `requested` maps model fields to new values; `failure_threshold` may be given as text
    (`5`, `10%`, `none`) instead of the two threshold fields. Checks the permissions (against the
    row as it is, under a lock), validates the row (its secret variables included), saves and
    audits what changed; returns {field: [old, new]}. Refusals are audited and raise ActionRefused
    with nothing saved.
    """
    values = dict(requested)
    try:
        if "failure_threshold" in values:
            count, percent = parse_threshold(values.pop("failure_threshold"))
            values.update(failure_threshold_count=count, failure_threshold_percent=percent)
        with transaction.atomic():
            row = Environment.objects.select_for_update().get(pk=env.pk)
            refusal = environment_change_refusal(user, row, values)
            if refusal:
                raise ActionRefused(refusal)
            before = {field: getattr(row, field) for field in values}
            for field, value in values.items():
                setattr(row, field, value)
            row.full_clean()
            # full_clean leaves the cleaned values on the row: compare those.
            changes = {f: [before[f], getattr(row, f)] for f in values if before[f] != getattr(row, f)}
            if changes:
                row.save(update_fields=list(changes))
                AuditEvent.record(
                    "environment_set", user=user, environment=row, parameters=changes, message=f"via {via}"
                )
    except ValidationError as exc:
        _refuse_environment(f"{env.name}: {'; '.join(validation_messages(exc))}", user, env, requested, via)
    except ActionRefused as exc:
        _refuse_environment(str(exc), user, env, requested, via)
    return changes


def _refuse_environment(message: str, user, env: Environment, requested: dict, via: str) -> None:
    AuditEvent.record(
        "environment_set",
        user=user,
        environment=env,
        outcome=AuditEvent.Outcome.REFUSED,
        parameters={"requested": {k: _plain(v) for k, v in requested.items()}},
        message=f"{message} (via {via})",
    )
    raise ActionRefused(message)


def parse_threshold(text: str) -> tuple[int | None, float | None]:
    """`5` -> 5 sites, `10%` -> 10 percent, `none` -> no limit. Returns (count, percent)."""
    value = text.strip().lower()
    if value in ("none", ""):
        return None, None
    try:
        if value.endswith("%"):
            percent = float(value[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return None, percent
        count = int(value)
        if count < 1:
            raise ValueError
        return count, None
    except ValueError:
        raise ValidationError(
            {"failure_threshold": f"{text!r} is not a count ≥ 1, a percentage in (0, 100]% or `none`"}
        ) from None


def validation_messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "error_dict"):
        return [f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items()]
    return exc.messages


def _plain(value):
    return value if isinstance(value, str | int | float | bool | dict | list | type(None)) else str(value)


# -- update groups ---------------------------------------------------------------------------------


def update_group_refusal(user, environments, action: str) -> str:
    """Why `user` may not `action` (add, change, delete) update groups of these environments."""
    protected = sorted({env.name for env in environments if env is not None and env.protected})
    if protected and not user.has_perm("releases.launch_protected"):
        return (
            f"{user.get_username()} may not {action} update groups of the protected environment "
            f"{', '.join(protected)}: {roles.ask('launch_protected')}"
        )
    return ""


def check_update_group_change(user, environments, action: str, *, parameters=None) -> None:
    """Raise ActionRefused (audited) unless `user` may `action` update groups of `environments`."""
    refusal = update_group_refusal(user, environments, action)
    if refusal:
        envs = [e for e in environments if e is not None]
        _refuse(
            refusal,
            f"updategroup_{action}",
            user=user,
            environment=envs[0] if len(envs) == 1 else None,
            parameters=parameters,
        )


def delete_update_groups(user, groups, *, via: str) -> int:
    """Delete update groups, one audit event per group with a copy of its fields."""
    groups = list(groups)
    check_update_group_change(
        user, [g.environment for g in groups], "delete", parameters={"objects": [str(g) for g in groups]}
    )
    with transaction.atomic():
        for group in groups:
            AuditEvent.record(
                "updategroup_delete",
                user=user,
                environment=group.environment,
                parameters={"object": str(group), "fields": copied_fields(group)},
                message=f"via {via}",
            )
            group.delete()
    return len(groups)


def copied_fields(obj) -> dict:
    """The row's fields as plain values (a related row by its name), for an audit record."""
    fields = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key:
            fields[field.name] = obj.pk
        elif field.is_relation:
            related = getattr(obj, field.name)
            fields[field.name] = None if related is None else str(related)
        else:
            fields[field.name] = _plain(field.value_from_object(obj))
    return fields
