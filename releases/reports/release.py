"""The release report's page data: the timeline and durations (`status.durations`, as `release
status --json` has them), updates over time, verification, failures and sweeps. Database only."""

from __future__ import annotations

from django.db.models import Count, Max, Min
from django.db.models.functions import TruncMinute, TruncSecond
from django.utils import timezone

from ..models import ReleasePlan, SiteResult
from ..states import SiteState, StepKind, StepState
from .status import durations, iso, sweeps
from .verification import verification

FAILURES_SHOWN = 50  # failed sites listed in the report (the counts are always complete)


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
        series.setdefault(env, []).append({"at": iso(at), "sites": n})
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
    (`verification`), failures, sweeps."""
    steps, now = list(plan.steps.select_related("environment").order_by("number")), timezone.now()
    problems = (StepState.FAILED, StepState.PAUSED, StepState.ABORTED)
    return {
        "version": plan.version, "state": plan.state, "durations": durations(plan, steps, now),
        "updates": updates_over_time(plan), "verification": verification(plan, steps, now),
        "failures": failures(plan),
        "problem_steps": [{"number": s.number, "state": s.state, "message": s.message}
                          for s in steps if s.state in problems and s.message],
        "sweeps": sweeps(steps),
    }  # fmt: skip
