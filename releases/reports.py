"""Read-only views of a plan: its status (the `status --json` contract) and step previews."""

from __future__ import annotations

from django.db.models import Count

from atlas.errors import AtlasError, AuthenticationError
from atlas.selectors import exclude_profile

from .models import EnvironmentMisconfigured, ReleasePlan, StepRun, UpdateGroup
from .states import SiteState, StepKind, StepState

PREVIEW_PATHS = 50  # site paths listed per batch in a preview (counts are always complete)


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def step_status(step: StepRun) -> dict:
    return {
        "number": step.number,
        "environment": step.environment.name if step.environment else None,
        "kind": step.kind,
        "title": step.title,
        "state": step.state,
        "message": step.message,
        "launched_by": step.launched_by_username or None,
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
        "counts": step.counts(),
        "task_ids": step.task_ids,
        "activity": step.activity or None,
        "liveness": step.liveness() or None,
        "to_check": _to_check(step),
    }


def _to_check(step: StepRun) -> list[dict]:
    """Sites of a delete step whose instance may have been destroyed: an operator must look."""
    if step.kind != StepKind.DELETE_SITES or step.state == StepState.PENDING:
        return []
    rows = step.sites.filter(needs_check=True).order_by("id").values("site_id", "path", "message")
    return list(rows)


def status(plan: ReleasePlan) -> dict:
    steps = list(plan.steps.select_related("environment").order_by("number"))
    sweeps = {s.environment.name: s.result["sweep"] for s in steps if s.environment and "sweep" in s.result}
    return {
        "version": plan.version,
        "state": plan.state,
        "profile": plan.profile_name,
        "release_branch": plan.release_branch,
        "release_commit": plan.release_commit,
        "final_tag": plan.final_tag or None,
        "final_commit": plan.final_commit or None,
        "created_by": plan.created_by_username,
        "steps": [step_status(s) for s in steps],
        "sweeps": sweeps,
    }


def preview(plan: ReleasePlan, number: int | None = None) -> list[dict]:
    steps = plan.steps.select_related("environment").order_by("number")
    if number is not None:
        steps = steps.filter(number=number)
    return [preview_step(step) for step in steps]


def preview_step(step: StepRun) -> dict:
    """Exactly what the step would create, change or target now, read from Atlas (nothing written)."""
    base = {
        "number": step.number,
        "environment": step.environment.name if step.environment else None,
        "kind": step.kind,
        "title": step.title,
        "state": step.state,
    }
    if step.kind in (StepKind.GIT_BRANCH, StepKind.FINALIZE):
        return {**base, "manual": True, "detail": _manual_detail(step)}
    if step.kind in (StepKind.DELETE_SITES, StepKind.UPDATE_SITES) and step.result.get("snapshot"):
        return {**base, **frozen_targets(step)}
    try:
        if step.kind in (StepKind.DELETE_SITES, StepKind.UPDATE_SITES):
            _groups(step)  # a selector the portal would not send: refused before any request
        client = step.environment.client()
        _check_credentials(client, step.environment)
        item = _release_item(client, step.plan)
        if step.kind in (StepKind.DEPLOY_CODE, StepKind.UPDATE_CODE):
            return {**base, **_code_preview(client, step, item)}
        return {**base, **_sites_preview(client, step, item)}
    except (AtlasError, EnvironmentMisconfigured) as exc:
        return {**base, "error": str(exc)}


def frozen_targets(step: StepRun) -> dict:
    """A site step's targets were frozen when it first ran; a relaunch continues with exactly
    those, so this (not a fresh read of the selectors) is what a relaunch would touch."""
    rows = (
        step.sites.values_list("batch_index", "state")
        .annotate(n=Count("id"))
        .order_by("batch_index", "state")
    )
    per_batch: dict[int, dict[str, int]] = {}
    for index, state, n in rows:
        per_batch.setdefault(index, {})[state] = n
    batches = []
    for index, snapshot in enumerate(step.result.get("batches", [])):
        states = per_batch.get(index, {})
        remaining = states.get(SiteState.PENDING, 0) + states.get(SiteState.DISPATCHED, 0)
        batches.append(
            {
                "name": snapshot["name"],
                "where": snapshot["where"],
                "count": remaining + states.get(SiteState.FAILED, 0),
                "remaining": remaining,
                "failed": states.get(SiteState.FAILED, 0),
                "done": states.get(SiteState.SUCCEEDED, 0) + states.get(SiteState.SKIPPED, 0),
                "paths": [],
            }
        )
    return {
        "action": step.kind,
        "frozen": True,
        "batches": batches,
        "total": sum(b["count"] for b in batches),
        "note": "targets frozen when the step first ran: a relaunch sends the remaining and failed sites",
    }


def confirmed_counts(previews: list[dict]) -> dict[int, dict[str, int]]:
    """What an operator confirms from previews: sites per batch, per site step."""
    return {
        p["number"]: {b["name"]: b["count"] for b in p["batches"]}
        for p in previews
        if "batches" in p and not p.get("error")
    }


def _release_item(client, plan):
    items = client.find_code(plan.profile_name, plan.version, "profile")
    return items[0] if items else None


def _manual_detail(step: StepRun) -> str:
    plan = step.plan
    if step.kind == StepKind.GIT_BRANCH:
        return f"branch {plan.release_branch} at {plan.release_commit}"
    if plan.final_commit:
        return f"finalized: tag {plan.final_tag} at {plan.final_commit}"
    return "record the tag and commit with `release finalize` after merging to master"


def _code_preview(client, step: StepRun, item) -> dict:
    plan, params = step.plan, step.params
    commit = plan.commit_for(params.get("commit", "release"))
    code = {
        "name": plan.profile_name,
        "version": plan.version,
        "code_type": "profile",
        "commit_hash": commit or None,
    }
    if step.kind == StepKind.DEPLOY_CODE:
        clash = (
            [c for c in client.find_code_by_commit(commit) if c.id != (item.id if item else None)]
            if commit
            else []
        )
        return {
            "action": "reuse" if item else "create",
            "code": {**code, "is_current": bool(params.get("is_current")), "id": item.id if item else None},
            "commit_clash": [{"id": c.id, "name": c.name, "version": c.version} for c in clash],
        }
    if item is None:
        return {"action": "missing", "code": code, "error": f"no {plan.profile_name} {plan.version} item yet"}
    return {
        "action": "update",
        "code": {**code, "id": item.id, "current_commit": item.commit_hash, "is_current": item.is_current},
        "make_current": bool(params.get("make_current")),
        "cascade_sites": client.count("sites", {"code.profile": item.id}),
    }


def _check_credentials(client, environment) -> None:
    """Atlas's GETs are public, so reads alone would preview a step that then fails on its first
    write: prove the credentials first, with the client's side-effect-free check."""
    try:
        client.check_credentials()
    except AuthenticationError:
        raise EnvironmentMisconfigured(
            f"Atlas {environment.name} refused the credentials (username {environment.username!r}, "
            f"password variable {environment.password_env}): fix the variable before launching"
        ) from None


def _groups(step: StepRun) -> list[tuple[UpdateGroup, dict]]:
    """The step's enabled update groups in order, each with its checked selector."""
    groups = UpdateGroup.objects.filter(environment=step.environment, step_number=step.number, enabled=True)
    return [
        (g, g.checked_selector()) for g in groups.select_related("environment").order_by("position", "id")
    ]


def _sites_preview(client, step: StepRun, item) -> dict:
    batches, seen = [], set()
    for group, selector in _groups(step):
        where = exclude_profile(selector, item.id) if item else selector
        sites = [s for s in client.list_sites(where) if s.id not in seen]
        seen.update(s.id for s in sites)
        batches.append(
            {
                "name": group.name,
                "where": where,
                "count": len(sites),
                "paths": [s.path for s in sites[:PREVIEW_PATHS]],
            }
        )
    note = "" if item else "the release item does not exist yet: sites already on it cannot be excluded"
    return {"action": step.kind, "batches": batches, "total": len(seen), "note": note}
