"""What the plan page and the step page show, computed in a bounded number of queries whatever the
number of site rows (the admin renders these; `reports` keeps the `status --json` contract)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Max, Min
from django.utils import timezone

from .models import ReleasePlan, SiteResult, StepRun, UpdateGroup
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


def human(length: timedelta | float | None, unknown: str = "") -> str:
    """A duration (or seconds) as the pages and the report show it: "under 1 s", "42 s",
    "3 min 07 s", "2 h 05 min"; `unknown` when there is none."""
    if length is None:
        return unknown
    seconds = length.total_seconds() if isinstance(length, timedelta) else length
    if seconds < 1:
        return "under 1 s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


# -- the plan page ---------------------------------------------------------------------------------


def plan_overview(plan: ReleasePlan) -> dict:
    """Every step with its counts and duration, and the DEV → TEST → PROD pipeline (3 queries)."""
    steps = list(plan.steps.select_related("environment").order_by("number"))
    per_step: dict[int, dict[str, int]] = SiteResult.objects.filter(step__plan=plan).states_by("step_id")
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
    per_batch: dict[int, dict[str, int]] = step.sites.states_by("batch_index")
    totals: dict[str, int] = {}
    for states in per_batch.values():
        for state, n in states.items():
            totals[state] = totals.get(state, 0) + n
    snapshots = step.result.get("batches", [])
    names = batch_names(step) if set(per_batch) - set(range(len(snapshots))) else []
    batches = []
    for index in sorted(set(per_batch) | set(range(len(snapshots)))):
        snapshot = snapshots[index] if index < len(snapshots) else {}
        batches.append(
            {
                "index": index,
                "number": index + 1,  # as the worker says it ("writing batch 3 of 10")
                "name": snapshot.get("name")
                or (names[index] if index < len(names) else f"batch {index + 1}"),
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


def batch_names(step: StepRun) -> list[str]:
    """The step's batches by update group name, in the order its snapshot reads them: the name of
    a batch whose sites are being read, before the worker records the batch itself."""
    groups = UpdateGroup.objects.for_step(step).enabled()
    return list(groups.order_by("position", "id").values_list("name", flat=True))


def _lease(step: StepRun, now) -> str:
    """Whether a worker is on the step, in plain words (its lease: `StepRun.liveness` says when
    none is)."""
    if step.state != StepState.RUNNING or not step.lease_owner:
        return ""
    left = (step.lease_expires_at - now).total_seconds() if step.lease_expires_at else 0
    return "a worker is on it" if left > 0 else ""


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


# Why a site swept after an update step is still off the release profile, in the order shown:
# (code, title, what to do, whether it needs action).
SWEEP_REASONS = (
    ("failed", "Failed in this step", "Needs action: retry the step's failed sites, or read their errors above.", True),
    ("late", "In one of the release's batches, but not updated",
     "Needs action: they matched a batch after the step read it (launched or moved since) or were "
     "skipped; check each in Atlas and update it there, or in the next release.", True),
    ("disabled", "In a batch an operator disabled",
     "Expected while the update group stays disabled (Admin → Update groups).", False),
    ("locked", "Locked sites", "Expected: Atlas leaves a locked site alone. Unlock one in Atlas first if it "
     "should take the release.", False),
    ("outside", "Outside the runbook's batches",
     "Expected: no batch of the release covers their status and update group, so the runbook leaves them "
     "on their profile. Add an update group (Admin → Update groups) if they should take the release.", False),
)  # fmt: skip


def sweep_groups(step: StepRun) -> dict:
    """The sites the step's sweep left behind, grouped by why (`SWEEP_REASONS`: what needs action
    first, then what is expected), then by status and update group in numeric order, each site
    linked to its Atlas record (2 queries)."""
    sites = step.result.get("sweep") or []
    if not sites:
        return {"total": 0, "reasons": [], "needs_action": 0}
    base = step.environment.api_url.rstrip("/") if step.environment else ""
    groups = list(
        # This step's batches and the earlier update steps' of its environment (TEST's step 6).
        UpdateGroup.objects.filter(environment=step.environment_id, step_number__lte=step.number).order_by(
            "step_number", "position", "id"
        )
    )
    failed: set[str] = set()
    if step.state != StepState.SUCCEEDED:  # a step succeeds only with no failed site
        swept = [s.get("_id") for s in sites]
        failed = set(
            step.sites.filter(site_id__in=swept, state=SiteState.FAILED).values_list("site_id", flat=True)
        )
    by_reason: dict[str, dict[tuple, list[dict]]] = {}
    for site in sites:
        reason = _sweep_reason(site, groups, failed)
        key = (site.get("status") or "", site.get("update_group"))
        by_reason.setdefault(reason, {}).setdefault(key, []).append(
            {**site, "atlas_url": f"{base}/sites/{site.get('_id')}"}
        )
    reasons = []
    for code, title, advice, action in SWEEP_REASONS:
        if code not in by_reason:
            continue
        grouped = sorted(by_reason[code].items(), key=lambda kv: (kv[0][0], _numeric(kv[0][1])))
        members = [
            {
                "status": status,
                "update_group": group,
                "sites": sorted(found, key=lambda s: s.get("path") or ""),
            }
            for (status, group), found in grouped
        ]
        count = sum(len(m["sites"]) for m in members)
        reasons.append({"code": code, "title": title, "advice": advice, "needs_action": action,
                        "count": count, "groups": members})  # fmt: skip
    needs_action = sum(r["count"] for r in reasons if r["needs_action"])
    return {"total": len(sites), "reasons": reasons, "needs_action": needs_action}


def _numeric(group) -> tuple:
    """Update groups sort as numbers (7, 8, 9, 10), a site without one last."""
    return (group is None, group if isinstance(group, int) else str(group))


def _sweep_reason(site: dict, groups: list[UpdateGroup], failed: set[str]) -> str:
    if site.get("_id") in failed:
        return "failed"
    if site.get("status") == "locked":
        return "locked"
    matched = [g for g in groups if _matches(g.selector(), site)]
    if any(g.enabled for g in matched):
        return "late"
    return "disabled" if matched else "outside"


def _matches(selector: dict, site: dict) -> bool:
    """Whether a site's status and update group satisfy a batch selector made of plain values,
    `$in` and `$ne` (the runbook's shapes); any other operator is taken as not matching."""
    for field, wanted in selector.items():
        value = site.get(field)
        if isinstance(wanted, dict):
            if set(wanted) == {"$in"}:
                if value not in wanted["$in"]:
                    return False
            elif set(wanted) == {"$ne"}:
                if value == wanted["$ne"]:
                    return False
            else:
                return False
        elif value != wanted:
            return False
    return True
