"""The release report's verification figures (issue 20 §6), from the times the sites' rows hold.

A site of an update step with verification on was PATCHed (`patched_at`: Atlas's `_updated`, in
whole seconds), then verified (`verified_at`), failed verification (`finished_at`), or is still
updating. From those columns alone, with nothing more recorded:

- per batch: sites verified, sites that failed verification, and the median and the longest time
  from PATCH to verified;
- per update step: how many sites were PATCHed and not yet verified or failed at each moment (the
  queue that the environment's `max_unverified` bounds), its maximum beside that limit, and at
  most `QUEUE_POINTS` points of it for the report's chart.

One query reads five columns of the PATCHed sites of the plan's update steps, in chunks (a PROD
step has some 22,000 sites); the rest is arithmetic here. A step with verification off has no
such rows (its sites succeed when Atlas answers, with no `verified_at`), so it is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from statistics import median

from django.db.models import Q
from django.utils import timezone

from ..models import ReleasePlan, SiteResult, StepRun
from ..states import SiteState, StepKind

CHUNK = 2000  # rows fetched at a time
QUEUE_POINTS = 240  # points of a step's queue depth drawn at most (its maximum is always exact)


@dataclass
class _StepRows:
    """What one update step's rows say about verification, gathered row by row."""

    until: datetime  # where a site still updating stops being counted: the step's end, or now
    waits: dict[int, list[float]] = field(default_factory=dict)  # batch -> PATCH→verified seconds
    failed: dict[int, int] = field(default_factory=dict)  # batch -> sites failed verification
    moves: list[tuple[datetime, int]] = field(default_factory=list)  # +1 at a PATCH, -1 at its end
    updating: int = 0

    def add(self, batch: int, state: str, patched: datetime, verified, finished) -> None:
        if verified is not None:
            # Atlas's clock in whole seconds against the portal's: never below zero.
            self.waits.setdefault(batch, []).append(max(0.0, (verified - patched).total_seconds()))
            end = verified
        elif state == SiteState.FAILED:
            self.failed[batch] = self.failed.get(batch, 0) + 1
            end = finished or self.until
        else:  # updating: still in Atlas's queue as far as the portal knows
            self.updating += 1
            end = self.until
        self.moves += [(patched, 1), (max(end, patched), -1)]


def verification(plan: ReleasePlan, steps: list[StepRun], now: datetime | None = None) -> list[dict]:
    """Per update step that verified sites, in step order: its batches' figures and its queue."""
    now = now or timezone.now()
    updates = {s.pk: s for s in steps if s.kind == StepKind.UPDATE_SITES}
    gathered = {pk: _StepRows(until=step.finished_at or now) for pk, step in updates.items()}
    rows = (
        SiteResult.objects.filter(step__plan=plan, step__kind=StepKind.UPDATE_SITES, patched_at__isnull=False)
        .filter(Q(verified_at__isnull=False) | Q(state__in=[SiteState.FAILED, SiteState.UPDATING]))
        .order_by()
        .values_list("step_id", "batch_index", "state", "patched_at", "verified_at", "finished_at")
    )
    for step_id, batch, state, patched, verified, finished in rows.iterator(chunk_size=CHUNK):
        if step_id in gathered:
            gathered[step_id].add(batch, state, patched, verified, finished)
    return [_step_figures(updates[pk], found) for pk, found in gathered.items() if found.moves]


def _step_figures(step: StepRun, found: _StepRows) -> dict:
    peak, points = queue_depth(found.moves)
    names = [b.get("name", "") for b in step.result.get("batches", [])]
    batches = []
    for index in sorted(found.waits.keys() | found.failed.keys()):
        waits = found.waits.get(index, [])
        batches.append(
            {
                "index": index,
                "name": names[index] if index < len(names) else "",
                "verified": len(waits),
                "failed": found.failed.get(index, 0),
                "median_seconds": round(median(waits), 1) if waits else None,
                "max_seconds": round(max(waits), 1) if waits else None,
            }
        )
    return {
        "number": step.number,
        "environment": step.environment.name if step.environment else None,
        "state": step.state,
        "batches": batches,
        "updating": found.updating,
        "queue_max": peak,
        "limit": step.environment.unverified_limit() if step.environment else None,
        "queue": [{"at": at.isoformat(), "sites": depth} for at, depth in points],
    }


def queue_depth(moves: list[tuple[datetime, int]], points: int = QUEUE_POINTS) -> tuple[int, list]:
    """The exact maximum of sites PATCHed and not yet ended (each counted over [PATCH, end)), and
    the depth over time as (moment, depth from then on): when there are more than `points`, the
    highest depth of each of `points` equal slices of time at its start, and the depth it ends
    with at its end when lower (so an idle stretch after it is drawn as idle)."""
    moves.sort(key=lambda move: (move[0], move[1]))  # an end before a PATCH at the same moment
    depth = peak = 0
    steps: list[tuple[datetime, int]] = []
    for at, change in moves:
        depth += change
        peak = max(peak, depth)
        if steps and steps[-1][0] == at:
            steps[-1] = (at, depth)  # within one moment the ends come first: the last is the highest
        else:
            steps.append((at, depth))
    if len(steps) <= points:
        return peak, steps
    first, last = steps[0][0], steps[-1][0]
    width = (last - first) / points
    slices: dict[int, tuple[int, int]] = {}  # slice -> (its highest depth, the depth it ends with)
    for at, value in steps[:-1]:
        index = min(points - 1, int((at - first) / width))
        slices[index] = (max(slices.get(index, (0, 0))[0], value), value)
    thinned = []
    for index, (highest, ending) in sorted(slices.items()):
        thinned.append((first + width * index, highest))
        if ending != highest:  # what it holds until the next slice with a change, maybe much later
            thinned.append((first + width * (index + 1), ending))
    return peak, [*thinned, steps[-1]]
