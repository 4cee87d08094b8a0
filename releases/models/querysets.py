"""Queries asked in several places, as queryset methods (django-celery-beat's `querysets.py`)."""

from __future__ import annotations

from django.db import models
from django.db.models import Count, Q

from ..states import RollbackState, SiteState


class UpdateGroupQuerySet(models.QuerySet):
    def for_step(self, step: models.Model) -> UpdateGroupQuerySet:
        """The update groups of the step's (a StepRun's) environment and runbook number: its batches."""
        return self.filter(environment=step.environment_id, step_number=step.number)

    def enabled(self) -> UpdateGroupQuerySet:
        """The groups a snapshot reads (an operator may disable one: it is then skipped)."""
        return self.filter(enabled=True)


class SiteResultQuerySet(models.QuerySet):
    def states_by(self, key: str) -> dict:
        """Sites per state for each value of `key` ({batch index: {state: n}}, say): one query."""
        grouped: dict = {}
        for value, state, n in self.values_list(key, "state").annotate(n=Count("id")).order_by():
            grouped.setdefault(value, {})[state] = n
        return grouped

    def state_counts(self) -> dict[str, int]:
        """The sites' counts as `StepRun.counts` gives them (one query): dispatched counts as
        pending, updating (PATCHed, not yet verified) as unverified."""
        rolled = Count("id", filter=Q(rollback=RollbackState.DONE))
        grouped = list(
            self.values_list("state")
            .annotate(n=Count("id"), rolled=rolled)
            .values_list("state", "n", "rolled")
        )
        rows = {state: n for state, n, _ in grouped}
        rolled_back = sum(count for _, _, count in grouped)
        return {
            "targeted": sum(rows.values()),
            "succeeded": rows.get(SiteState.SUCCEEDED, 0),
            "failed": rows.get(SiteState.FAILED, 0),
            "skipped": rows.get(SiteState.SKIPPED, 0),
            "pending": rows.get(SiteState.PENDING, 0) + rows.get(SiteState.DISPATCHED, 0),
            "unverified": rows.get(SiteState.UPDATING, 0),
            "rolled_back": rolled_back,
        }
