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


# The form field (the admin's, the API's) each checked column is typed into.
FORM_FIELDS = {
    "version": "version",
    "release_branch": "branch",
    "git_url": "git_url",
    "profile_name": "profile",
}


def _fits(column: str, value: str) -> None:
    """Refuse a value longer than its ReleasePlan column (PostgreSQL would raise a DataError)."""
    limit = ReleasePlan._meta.get_field(column).max_length
    if len(value) > limit:
        what = f"the {column.replace('_', ' ')}"
        raise ActionRefused(f"{what} is longer than {limit} characters ({len(value)})", field=FORM_FIELDS[column],
                            code="invalid")  # fmt: skip


def _validate(validator, value: str, what: str, field: str) -> None:
    try:
        validator(value)
    except ValidationError:
        raise ActionRefused(f"{what} {value!r} {validator.message}", field=field, code="invalid") from None


def _check_plan(version: str, commit: str, branch: str, git_url: str, profile: str) -> dict:
    """The plan's columns once every input is valid and nothing is in the way (refused otherwise)."""
    _validate(VERSION_VALIDATOR, version, "version", "version")
    _validate(SHA_VALIDATOR, commit, "commit", "release_commit")
    columns = {"version": version, "release_branch": branch, "git_url": git_url, "profile_name": profile}
    for column, value in columns.items():
        _fits(column, value)
    if ".git" not in git_url:
        raise ActionRefused(f"git URL {git_url!r} must contain .git (Atlas refuses it otherwise)", field="git_url",
                            code="invalid")  # fmt: skip
    if ReleasePlan.objects.filter(version=version).exists():
        raise ActionRefused(f"release {version} already exists", field="version", code="exists")
    missing = {d.environment for d in STEPS if d.environment} - set(
        Environment.objects.values_list("name", flat=True)
    )
    if missing:
        raise ActionRefused(f"environments {', '.join(sorted(missing))} do not exist: run `manage.py loadrunbook`",
                            code="not_configured")  # fmt: skip
    return columns


def create_plan(
    version: str, *, commit: str, user, branch: str = "", git_url: str = "", profile: str = "express"
) -> ReleasePlan:
    params = {"version": version, "commit": commit, "branch": branch, "git_url": git_url, "profile": profile}
    authorize(user, "create_plan", parameters=params)
    git_url = git_url or "https://github.com/CuBoulder/express.git"
    try:
        columns = _check_plan(version, commit, branch or f"release/{version}", git_url, profile)
    except ActionRefused as exc:
        AuditEvent.record(
            "create_plan", user=user, outcome=AuditEvent.Outcome.REFUSED, parameters=params, message=str(exc)
        )
        raise
    environments = {e.name: e for e in Environment.objects.all()}
    with transaction.atomic():
        plan = ReleasePlan.objects.create(
            **columns, release_commit=commit, created_by=user, created_by_username=user.get_username()
        )
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
        problems.append(
            f"the tag is longer than {ReleasePlan._meta.get_field('final_tag').max_length} characters"
        )
    try:
        SHA_VALIDATOR(commit)
    except ValidationError:
        problems.append(f"commit {commit!r} {SHA_VALIDATOR.message}")
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
