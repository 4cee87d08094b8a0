"""The `release status --json` document, from the database alone: every step's state and counts,
the sweeps, and the durations (which the release report shows too). Nothing here asks Atlas."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from ..models import ReleasePlan, SiteResult, StepRun
from ..states import ACTIVE, SiteState, StepKind, StepState


def iso(value) -> str | None:
    """A timestamp as the documents carry it: ISO 8601, or None."""
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
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
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


def sweeps(steps: list[StepRun]) -> dict[str, list]:
    """The sites each environment's sweep left off the release profile, by environment name."""
    return {s.environment.name: s.result["sweep"] for s in steps if s.environment and "sweep" in s.result}


def status(plan: ReleasePlan) -> dict:
    """The `release status --json` document."""
    steps = list(plan.steps.select_related("environment").order_by("number"))
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
        "sweeps": sweeps(steps),
        "durations": durations(plan, steps),
    }


# -- durations from recorded timestamps, aggregated in SQL ----------------------------------------


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
             "started_at": iso(begin), "finished_at": iso(end), "duration_seconds": seconds,
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
        "started_at": iso(first), "finished_at": iso(last), "total_seconds": _seconds(first, last),
        "active_seconds": round(sum(e["active"] for e in environments.values()), 3) if environments else None,
        "environments": {name: _environment_row(e) for name, e in environments.items()},
        "steps": [figures for _, _, figures in timed],
    }  # fmt: skip


def _step_durations(step: StepRun, end, rows: list[dict]) -> dict:
    return {"number": step.number, "environment": step.environment.name if step.environment else None,
            "kind": step.kind, "state": step.state, "started_at": iso(step.started_at),
            "finished_at": iso(step.finished_at), "duration_seconds": _seconds(step.started_at, end),
            "ongoing": step.finished_at is None and end is not None, "batches": _batches(step, rows)}  # fmt: skip


def _environment_row(e: dict) -> dict:
    return {"started_at": iso(e["started_at"]), "finished_at": iso(e["finished_at"]),
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
