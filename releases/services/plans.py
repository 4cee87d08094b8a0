"""Release plans: creating one, finding its steps, and recording the finalized release (step 7)."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from ..models import (
    AuditEvent,
    Environment,
    ReleasePlan,
    StepRun,
)
from ..models.plan import SHA_VALIDATOR, VERSION_VALIDATOR
from ..runbook import STEPS
from ..states import DONE, StepState
from .core import (
    ActionRefused,
    authorize,
    refuse,
)

logger = logging.getLogger(__name__)


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
    git_url = git_url or "https://github.com/CuBoulder/express.git"
    branch = branch or f"release/{version}"
    try:
        problems = plan_problems(version, commit, branch, git_url, profile)
        if problems:
            raise ActionRefused(
                "; ".join(message for _, message in problems), errors=problems, code="invalid"
            )
        missing = {d.environment for d in STEPS if d.environment} - set(
            Environment.objects.values_list("name", flat=True)
        )
        if missing:
            raise ActionRefused(f"environments {', '.join(sorted(missing))} do not exist: run `manage.py loadrunbook`",
                                code="not_configured")  # fmt: skip
    except ActionRefused as exc:
        AuditEvent.record(
            "create_plan", user=user, outcome=AuditEvent.Outcome.REFUSED, parameters=params, message=str(exc)
        )
        raise
    environments = {e.name: e for e in Environment.objects.all()}
    with transaction.atomic():
        plan = ReleasePlan.objects.create(
            version=version, release_commit=commit, release_branch=branch, git_url=git_url, profile_name=profile,
            created_by=user, created_by_username=user.get_username(),
        )  # fmt: skip
        StepRun.objects.bulk_create(
            StepRun(
                plan=plan,
                number=d.number,
                environment=environments.get(d.environment),
                kind=d.kind,
                title=d.title,
                params=dict(d.params),
            )  # fmt: skip
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


def finalize(plan: ReleasePlan, *, tag: str, commit: str, user) -> ReleasePlan:
    params = {"tag": tag, "commit": commit}
    authorize(user, "finalize", plan=plan, parameters=params)
    step = get_step(plan, 7)
    problems = _finalize_problems(plan, step, tag, commit)
    if problems:
        refuse("cannot finalize: " + "; ".join(problems), "finalize", user=user, step=step, parameters=params)
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
        refuse("the release was finalized by someone else meanwhile: look again", "finalize", user=user,
                step=step, parameters=params)  # fmt: skip
    return plan


def _finalize_problems(plan: ReleasePlan, step: StepRun, tag: str, commit: str) -> list[str]:
    """Everything wrong with finalizing now, all at once."""
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
    return problems
