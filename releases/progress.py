"""What the plan page and the step page show, computed in a bounded number of queries whatever the
number of site rows (the admin renders these; `reports` keeps the `status --json` contract)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Max, Min
from django.utils import timezone

from .models import ReleasePlan, SiteResult, StepRun
from .states import ACTIVE, DONE, SiteState, StepState

PIPELINE = ("DEV", "TEST", "PROD")
FAILURE_GROUPS = 20  # distinct errors listed on a step page


def _counts(states: dict[str, int]) -> dict[str, int]:
    """Site counts as the pages show them: in flight (dispatched) apart from not yet sent, and
    updating at Atlas (PATCH answered, not yet verified) apart from both."""
    targeted = sum(states.values())
    succeeded = states.get(SiteState.SUCCEEDED, 0)
    failed = states.get(SiteState.FAILED, 0)
    skipped = states.get(SiteState.SKIPPED, 0)
    in_flight = states.get(SiteState.DISPATCHED, 0)
    updating = states.get(SiteState.UPDATING, 0)  # answered by Atlas, not yet verified
    return {
        "targeted": targeted,
        "succeeded": succeeded,
        "failed": failed,
        "skipped": skipped,
        "in_flight": in_flight,
        "updating": updating,
        "updating_pct": _pct(updating, targeted),
        "remaining": states.get(SiteState.PENDING, 0),
        "done_pct": _pct(succeeded + skipped, targeted),
        "failed_pct": _pct(failed, targeted),
        "in_flight_pct": _pct(in_flight, targeted),
    }


def _pct(part: int, whole: int) -> float:
    return round(part * 100.0 / whole, 1) if whole else 0.0


def duration(step: StepRun, now=None) -> timedelta | None:
    if step.started_at is None:
        return None
    end = step.finished_at or (now or timezone.now())
    return max(end - step.started_at, timedelta(0))


def human(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# -- the plan page ---------------------------------------------------------------------------------


def plan_overview(plan: ReleasePlan) -> dict:
    """Every step with its counts and duration, and the DEV → TEST → PROD pipeline (3 queries)."""
    steps = list(plan.steps.select_related("environment").order_by("number"))
    per_step: dict[int, dict[str, int]] = {}
    rows = SiteResult.objects.filter(step__plan=plan).values_list("step_id", "state").annotate(n=Count("id"))
    for step_id, state, n in rows.order_by():
        per_step.setdefault(step_id, {})[state] = n
    now = timezone.now()
    entries = []
    for step in steps:
        entries.append(
            {
                "step": step,
                "counts": _counts(per_step.get(step.pk, {})),
                "duration": human(duration(step, now)),
                "liveness": step.liveness(now),
            }
        )
    return {
        "steps": entries,
        "pipeline": pipeline(entries),
        "any_running": any(s.state in ACTIVE for s in steps),
    }


def pipeline(entries: list[dict]) -> list[dict]:
    stages = []
    for name in PIPELINE:
        mine = [e for e in entries if e["step"].environment and e["step"].environment.name == name]
        states = [e["step"].state for e in mine]
        if any(s in ACTIVE for s in states):
            state = StepState.RUNNING if StepState.RUNNING in states else StepState.PAUSED
        elif any(s in (StepState.FAILED, StepState.ABORTED) for s in states):
            state = StepState.FAILED
        elif mine and all(s in DONE for s in states):
            state = StepState.SUCCEEDED
        else:
            state = StepState.PENDING
        done = sum(1 for s in states if s in DONE)
        stages.append({"name": name, "steps": mine, "done": done, "total": len(mine), "state": state})
    return stages


def plan_summary(plan: ReleasePlan) -> dict:
    """For the plan list, from prefetched steps (no query of its own): current step and progress."""
    steps = sorted(plan.steps.all(), key=lambda s: s.number)
    current = next((s for s in steps if s.state in ACTIVE), None) or next(
        (s for s in steps if s.state not in DONE), None
    )
    progress = []
    for name in PIPELINE:
        mine = [s for s in steps if s.environment and s.environment.name == name]
        progress.append((name, sum(1 for s in mine if s.state in DONE), len(mine)))
    return {"current": current, "progress": progress}


# -- the step page ---------------------------------------------------------------------------------


def step_progress(step: StepRun, now=None) -> dict:
    """Progress, per-batch breakdown, elapsed time and an ETA from the observed rate (3 queries)."""
    now = now or timezone.now()
    per_batch: dict[int, dict[str, int]] = {}
    rows = step.sites.values_list("batch_index", "state").annotate(n=Count("id")).order_by()
    for index, state, n in rows:
        per_batch.setdefault(index, {})[state] = n
    totals: dict[str, int] = {}
    for states in per_batch.values():
        for state, n in states.items():
            totals[state] = totals.get(state, 0) + n
    snapshots = step.result.get("batches", [])
    batches = []
    for index in sorted(set(per_batch) | set(range(len(snapshots)))):
        snapshot = snapshots[index] if index < len(snapshots) else {}
        batches.append(
            {
                "index": index,
                "name": snapshot.get("name", f"batch {index + 1}"),
                "where": snapshot.get("where"),
                **_counts(per_batch.get(index, {})),
            }
        )
    counts = _counts(totals)
    return {
        "counts": counts,
        "batches": batches,
        "elapsed": human(duration(step, now)),
        "eta": _eta(step, counts, now),
        "activity": step.activity if step.state == StepState.RUNNING else "",
        "liveness": step.liveness(now),
        "lease": _lease(step, now),
    }


def _eta(step: StepRun, counts: dict, now) -> str:
    """Time left at the rate observed since the step started (sites finished per second)."""
    left = counts["remaining"] + counts["in_flight"]
    if step.state != StepState.RUNNING or not left or step.started_at is None:
        return ""
    seen = step.sites.filter(finished_at__gte=step.started_at).aggregate(
        n=Count("id"), first=Min("finished_at"), last=Max("finished_at")
    )
    if not seen["n"]:
        return "no site finished yet"
    elapsed = max((now - step.started_at).total_seconds(), 1.0)
    rate = seen["n"] / elapsed
    return f"about {human(timedelta(seconds=left / rate))} ({rate:.1f} sites/s)"


def _lease(step: StepRun, now) -> str:
    if step.state != StepState.RUNNING or not step.lease_owner:
        return ""
    left = (step.lease_expires_at - now).total_seconds() if step.lease_expires_at else 0
    return f"held by {step.lease_owner}, {left:.0f} s left" if left > 0 else f"lapsed ({step.lease_owner})"


def failure_groups(step: StepRun) -> list[dict]:
    """Failed sites grouped by error, largest first, each with one site's Atlas answer (2 queries)."""
    groups = list(
        step.sites.filter(state=SiteState.FAILED)
        .values("message", "http_status")
        .annotate(n=Count("id"), sample=Min("id"))
        .order_by("-n", "message")[:FAILURE_GROUPS]
    )
    samples = dict(
        SiteResult.objects.filter(id__in=[g["sample"] for g in groups]).values_list("id", "response")
    )
    for group in groups:
        group["response"] = samples.get(group["sample"])
    return groups


def sweep_groups(step: StepRun) -> list[dict]:
    """The sites the step's sweep left behind, grouped by status and update group, each with a
    link to its Atlas record."""
    sites = step.result.get("sweep") or []
    base = step.environment.api_url.rstrip("/") if step.environment else ""
    grouped: dict[tuple, list[dict]] = {}
    for site in sites:
        key = (site.get("status") or "", site.get("update_group"))
        grouped.setdefault(key, []).append({**site, "atlas_url": f"{base}/sites/{site.get('_id')}"})
    return [
        {"status": status, "update_group": group, "sites": members}
        for (status, group), members in sorted(grouped.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
    ]
