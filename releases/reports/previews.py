"""Read-only views of a plan: its status (the `status --json` contract) and step previews."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import Count, Max, Min, Q
from django.db.models.functions import TruncMinute, TruncSecond
from django.utils import timezone

from atlas.errors import AtlasError
from atlas.selectors import exclude_profile

from ..connectivity import CredentialsProbes, CredentialsRefused, DrushRole
from ..models import EnvironmentMisconfigured, ReleasePlan, SiteResult, StepRun, UpdateGroup
from ..states import ACTIVE, DONE, SiteState, StepKind, StepState
from .verification import verification

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
        "to_check": sites_to_check(step),
    }


def sites_to_check(step: StepRun, limit: int = 200) -> list[dict]:
    """Sites of a delete step whose instance may have been destroyed: an operator must look."""
    if step.kind != StepKind.DELETE_SITES or step.state == StepState.PENDING:
        return []
    rows = step.sites.filter(needs_check=True).order_by("id").values("site_id", "path", "message")
    return list(rows[:limit])


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
        "durations": durations(plan, steps),
    }


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
    groups = UpdateGroup.objects.filter(environment=step.environment, step_number=step.number, enabled=False)
    return [{"name": g.name, "where": g.selector()} for g in groups.order_by("position", "id")]


# -- the release report: durations from recorded timestamps, aggregated in SQL --------------------

FAILURES_SHOWN = 50  # failed sites listed in the report (the counts are always complete)


def _seconds(start, end) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def _per_minute(sites: int, seconds: float | None) -> float | None:
    """Sites per minute; none over less than a second (a rate from a few milliseconds is noise)."""
    return round(sites * 60.0 / seconds, 2) if seconds and seconds >= 1 else None


def _epoch(value) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None


def _batch_rows(plan: ReleasePlan) -> dict[int, list[dict]]:
    """{step id: per batch: sites by state and the first/last recorded site finish}, one query."""
    rows = (
        SiteResult.objects.filter(step__plan=plan)
        .values("step_id", "batch_index")
        .annotate(
            sites=Count("id"),
            succeeded=Count("id", filter=Q(state=SiteState.SUCCEEDED)),
            failed=Count("id", filter=Q(state=SiteState.FAILED)),
            skipped=Count("id", filter=Q(state=SiteState.SKIPPED)),
            first_finished=Min("finished_at"),
            last_finished=Max("finished_at"),
        )
        .order_by("step_id", "batch_index")
    )
    per_step: dict[int, list[dict]] = {}
    for row in rows:
        per_step.setdefault(row.pop("step_id"), []).append(row)
    return per_step


def _batches(step: StepRun, rows: list[dict]) -> list[dict]:
    """Per batch: from the recorded start of its writes (the engine's batch_started_at; else the
    previous batch's end, or the step's start) to its recorded end (batch_finished_at; else its
    last site's finish)."""
    names = [b.get("name", "") for b in step.result.get("batches", [])]
    started = step.result.get("batch_started_at", {})
    finished = step.result.get("batch_finished_at", {})
    batches, previous_end = [], step.started_at
    for row in rows:
        index = row["batch_index"]
        begin = _epoch(started.get(str(index))) or previous_end
        end = _epoch(finished.get(str(index))) or row["last_finished"]
        seconds = _seconds(begin, end)
        batches.append(
            {"index": index, "name": names[index] if index < len(names) else "", "sites": row["sites"],
             "succeeded": row["succeeded"], "failed": row["failed"], "skipped": row["skipped"],
             "started_at": _iso(begin), "finished_at": _iso(end), "duration_seconds": seconds,
             "sites_per_minute": _per_minute(row["succeeded"], seconds)}
        )  # fmt: skip
        previous_end = end or previous_end
    return batches


def durations(plan: ReleasePlan, steps: list[StepRun] | None = None, now=None) -> dict:
    """Durations per step and per batch, per environment and for the whole release, and sites
    updated per minute, from the recorded timestamps. A step still active counts up to `now`.

    An environment's (and the release's active) duration is the sum of its steps' own times, from
    each start to its end: the waits between steps (a finalize in git, a day between stages) are
    not in it. The release's `total_seconds` is its first start to its last end."""
    now = now or timezone.now()
    steps = steps if steps is not None else list(plan.steps.select_related("environment").order_by("number"))
    rows = _batch_rows(plan)
    timed = []
    for step in steps:
        end = step.finished_at or (now if step.state in ACTIVE and step.started_at else None)
        timed.append((step, end, _step_durations(step, end, rows.get(step.pk, []))))
    environments = _environment_totals(timed)
    first = min((e["started_at"] for e in environments.values()), default=None)
    last = max((e["finished_at"] for e in environments.values() if e["finished_at"]), default=None)
    return {
        "started_at": _iso(first), "finished_at": _iso(last), "total_seconds": _seconds(first, last),
        "active_seconds": round(sum(e["active"] for e in environments.values()), 3) if environments else None,
        "environments": {name: _environment_row(e) for name, e in environments.items()},
        "steps": [figures for _, _, figures in timed],
    }  # fmt: skip


def _step_durations(step: StepRun, end, rows: list[dict]) -> dict:
    return {"number": step.number, "environment": step.environment.name if step.environment else None,
            "kind": step.kind, "state": step.state, "started_at": _iso(step.started_at),
            "finished_at": _iso(step.finished_at), "duration_seconds": _seconds(step.started_at, end),
            "ongoing": step.finished_at is None and end is not None, "batches": _batches(step, rows)}  # fmt: skip


def _environment_row(e: dict) -> dict:
    return {"started_at": _iso(e["started_at"]), "finished_at": _iso(e["finished_at"]),
            "duration_seconds": round(e["active"], 3), "span_seconds": _seconds(e["started_at"], e["finished_at"]),
            "sites_updated": e["updated"], "sites_per_minute": _per_minute(e["updated"], e["updating_seconds"])}  # fmt: skip


def _environment_totals(timed: list[tuple]) -> dict[str, dict]:
    """Per environment: its first start and last end, its steps' time summed, and its update
    steps' time and sites updated (the rate)."""
    environments: dict[str, dict] = {}
    for step, end, figures in timed:
        if not (figures["environment"] and step.started_at):
            continue
        seconds = figures["duration_seconds"] or 0.0
        env = environments.setdefault(
            figures["environment"],
            {"started_at": step.started_at, "finished_at": end, "active": 0.0, "updating_seconds": 0.0,
             "updated": 0},
        )  # fmt: skip
        env["started_at"] = min(env["started_at"], step.started_at)
        env["finished_at"] = max(filter(None, [env["finished_at"], end]), default=None)
        env["active"] += seconds
        if step.kind == StepKind.UPDATE_SITES:
            env["updating_seconds"] += seconds
            env["updated"] += sum(b["succeeded"] for b in figures["batches"])
    return environments


def updates_over_time(plan: ReleasePlan) -> dict:
    """Sites updated (update steps, succeeded) per environment over time: per minute, and in
    buckets of a second when the whole release's updates spanned a quarter of an hour or less
    (the chart's points). Two grouped queries, however many sites."""
    updated = SiteResult.objects.filter(step__plan=plan, step__kind=StepKind.UPDATE_SITES)
    updated = updated.filter(state=SiteState.SUCCEEDED, finished_at__isnull=False)
    span = updated.aggregate(first=Min("finished_at"), last=Max("finished_at"))
    if span["first"] is None:
        return {"bucket": "minute", "per_minute": {}, "series": {}}
    fine = (span["last"] - span["first"]).total_seconds() <= 15 * 60
    per_minute = _series(updated, TruncMinute)
    series = _series(updated, TruncSecond) if fine else per_minute
    return {"bucket": "second" if fine else "minute", "per_minute": per_minute, "series": series}


def _series(updated, trunc) -> dict[str, list[dict]]:
    rows = (
        updated.annotate(at=trunc("finished_at"))
        .values_list("step__environment__name", "at")
        .annotate(n=Count("id"))
        .order_by("at")
    )
    series: dict[str, list[dict]] = {}
    for env, at, n in rows:
        series.setdefault(env, []).append({"at": _iso(at), "sites": n})
    return series


def failures(plan: ReleasePlan, limit: int = FAILURES_SHOWN) -> dict:
    """Failed sites: the count per step, and the first `limit` with Atlas's answer."""
    failed = SiteResult.objects.filter(step__plan=plan, state=SiteState.FAILED)
    per_step = dict(
        failed.values_list("step__number").annotate(n=Count("id")).values_list("step__number", "n")
    )
    sample = failed.select_related("step", "step__environment").order_by("step__number", "id")[:limit]
    return {
        "total": sum(per_step.values()),
        "per_step": per_step,
        "sites": [
            {"step": r.step.number, "environment": r.step.environment.name if r.step.environment else None,
             "path": r.path, "sid": r.sid, "batch": r.batch_name, "http_status": r.http_status,
             "attempts": r.attempts, "message": r.message, "needs_check": r.needs_check}
            for r in sample
        ],
    }  # fmt: skip


def release_report(plan: ReleasePlan) -> dict:
    """The report page's data: the timeline and durations, updates over time, verification
    (report_verification), failures, sweeps."""
    steps, now = list(plan.steps.select_related("environment").order_by("number")), timezone.now()
    problems = (StepState.FAILED, StepState.PAUSED, StepState.ABORTED)
    return {
        "version": plan.version, "state": plan.state, "durations": durations(plan, steps, now),
        "updates": updates_over_time(plan), "verification": verification(plan, steps, now),
        "failures": failures(plan),
        "problem_steps": [{"number": s.number, "state": s.state, "message": s.message}
                          for s in steps if s.state in problems and s.message],
        "sweeps": {s.environment.name: s.result["sweep"] for s in steps if s.environment and "sweep" in s.result},
    }  # fmt: skip
