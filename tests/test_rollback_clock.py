"""Issue 20 §4: a rollback's verification deadline runs on the portal's clock, as the forward
update's does; only the freshness of a report is judged on Atlas's clock (its `_updated`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from releases.engine.rollback import Rollback
from releases.models import SiteResult
from releases.states import RollbackState, StepState
from tests.test_rollback import failed_step_14, run_rollback

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_rolled_back_site_records_atlas_answer_and_when_the_portal_saw_it(simulator):
    prod, step, user, broken, _ = failed_step_14(simulator)
    before = timezone.now()

    assert run_rollback(step, user, failed=True) == StepState.PAUSED

    rows = SiteResult.objects.filter(step=step, path__in=broken)
    assert rows.count() == 2
    for row in rows:
        assert row.rollback == RollbackState.DONE, row.rollback_message
        # Atlas's `_updated` is whole seconds; the portal's own moment is its clock, after launch.
        assert row.rollback_at is not None and row.rollback_at.microsecond == 0
        assert before <= row.rollback_answered_at <= timezone.now()
        assert row.reported_at > row.rollback_at


def test_the_deadline_runs_from_the_portal_answer_not_from_atlas_clock():
    """Atlas's clock an hour behind the portal's: its `_updated` would put the site past a 900 s
    deadline the moment it was answered; the deadline counts from the portal's answer."""
    now = timezone.now()
    row = SiteResult(rollback_at=now - timedelta(hours=1), rollback_answered_at=now)
    track = Rollback({})

    assert track.patched(row) == now - timedelta(hours=1)  # reports are fresh on Atlas's clock
    assert track.answered(row) == now
    assert timezone.now() - track.answered(row) < timedelta(seconds=900)
