"""Step previews, read from Atlas now (nothing written): what a step would create, change or
target, and a launch's blast radius. The one module of `releases.reports` that asks Atlas."""

from __future__ import annotations

from atlas.errors import AtlasError
from atlas.selectors import exclude_profile

from ..connectivity import CredentialsProbes, CredentialsRefused, DrushRole
from ..models import EnvironmentMisconfigured, ReleasePlan, StepRun, UpdateGroup
from ..states import DONE, SiteState, StepKind

PREVIEW_PATHS = 50  # site paths listed per batch in a preview (counts are always complete)


def preview(plan: ReleasePlan, number: int | None = None) -> list[dict]:
    steps = plan.steps.select_related("environment").order_by("number")
    if number is not None:
        steps = steps.filter(number=number)
    probes = CredentialsProbes()  # one credentials probe per environment for the whole preview
    previews = [preview_step(step, probes=probes) for step in steps]
    _note_items_to_come(previews)
    return previews


def preview_step(step: StepRun, *, probes: CredentialsProbes | None = None) -> dict:
    """Exactly what the step would create, change or target now, read from Atlas (nothing written).

    The credentials are proven first (Atlas's GETs are public, so reads alone would preview a step
    that then fails on its first write), through `probes`: pass one `CredentialsProbes` to every
    step previewed for one page or command, so each environment is asked once. A step already
    done writes nothing more, so its credentials are not asked; nor are a frozen site step's
    (shown from the database alone).
    """
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
        client, probes = step.environment.client(), probes or CredentialsProbes()
        if step.state not in DONE:
            probes.check(step.environment, client)
        item = _release_item(client, step.plan)
        if step.kind in (StepKind.DEPLOY_CODE, StepKind.UPDATE_CODE):
            return {**base, **_code_preview(client, step, item)}
        preview = {**base, **_sites_preview(client, step, item)}
        if step.kind == StepKind.UPDATE_SITES and step.state not in DONE:
            _drush_role(preview, probes.drush_role(step.environment, client))
        return preview
    except CredentialsRefused as exc:
        remembered = exc.seconds_ago is not None
        refused = {"refused": True, "remembered": remembered, "seconds_ago": exc.seconds_ago}
        return {**base, "error": str(exc), "credentials": refused}
    except (AtlasError, EnvironmentMisconfigured) as exc:
        return {**base, "error": str(exc)}


def _drush_role(preview: dict, role: DrushRole) -> None:
    """Verification asks Atlas for the sites' reports with drush: say when it will not (the
    account lacks the role) or could not be asked, in the note the CLI and confirmation show."""
    if role.code in (DrushRole.MISSING, DrushRole.UNKNOWN):
        preview["drush_role"] = {"code": role.code, "message": role.message, "remembered": role.remembered}
        preview["note"] = "; ".join(filter(None, [preview.get("note"), role.message]))


def frozen_targets(step: StepRun) -> dict:
    """A site step's targets were frozen when it first ran; a relaunch continues with exactly
    those, so this (not a fresh read of the selectors) is what a relaunch would touch."""
    per_batch: dict[int, dict[str, int]] = step.sites.states_by("batch_index")
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


def _groups(step: StepRun) -> list[tuple[UpdateGroup, dict]]:
    """The step's enabled update groups in order, each with its checked selector."""
    groups = UpdateGroup.objects.for_step(step).enabled()
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
    return {
        "action": step.kind,
        "batches": batches,
        "total": len(seen),
        "note": "",  # set by `_note_items_to_come` where an earlier step of the launch creates the item
        "item_exists": item is not None,
        "disabled": disabled_groups(step),
    }


def _note_items_to_come(previews: list[dict]) -> None:
    """Where it matters, say what a missing release item means: a site step previewed before the
    step of the same launch (or preview) that deploys the item counts every matching site, but
    those already on the item when it runs are left out, so its count can only go down."""
    deploys: dict[str, int] = {}
    for preview in previews:
        env = preview["environment"]
        if preview["kind"] == StepKind.DEPLOY_CODE and preview.get("action") == "create":
            deploys.setdefault(env, preview["number"])
        elif "batches" in preview and preview.get("item_exists") is False and env in deploys:
            items = (
                f"step {deploys[env]} creates the release's code item first: a site already on it "
                "when this step runs is left out, so this count can only go down"
            )
            preview["note"] = "; ".join(filter(None, [items, preview.get("note")]))


def blast_radius(step: StepRun, *, stage: bool = False) -> dict:
    """Everything a launch may reach, read from Atlas now: the step, and for a stage every later
    step of its environment up to a manual gate, with sites per batch, deletions and updates
    apart, and the counts to confirm (`confirmed_counts`), as `release launch` shows them."""
    steps = [s for s in step.stage_chain() if s.state not in DONE] if stage else [step]
    probes = CredentialsProbes()  # one credentials probe per environment for the whole page
    previews = [preview_step(s, probes=probes) for s in steps]
    _note_items_to_come(previews)
    deletions = sum(p.get("total", 0) for p in previews if p["kind"] == StepKind.DELETE_SITES)
    updates = sum(p.get("total", 0) for p in previews if p["kind"] == StepKind.UPDATE_SITES)
    # Sites on a code item a code step changes: Atlas re-deploys each of them (atlas-api.md).
    redeployed = sum(p.get("cascade_sites") or 0 for p in previews)
    return {
        "previews": previews,
        "deletions": deletions,
        "updates": updates,
        "redeployed": redeployed,
        "code": [p for p in previews if "code" in p],
        "total": deletions + updates + redeployed,
        "errors": [p for p in previews if p.get("error")],
        "confirmed": confirmed_counts(previews),
    }


def disabled_groups(step: StepRun) -> list[dict]:
    """The step's update groups an operator disabled: the snapshot skips them (shown, not counted)."""
    groups = UpdateGroup.objects.for_step(step).filter(enabled=False)
    return [{"name": g.name, "where": g.selector()} for g in groups.order_by("position", "id")]
