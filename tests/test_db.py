"""`releases.db.insert_new`: the snapshot's bulk INSERT, on whichever database the suite runs."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from releases import services
from releases.db import insert_new
from releases.models import SiteResult
from releases.states import SiteState
from tests.support import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def step():
    call_command("loadrunbook", verbosity=0)
    plan = services.create_plan("2.8.5", commit="a" * 40, user=make_user())
    return plan.steps.get(number=14)


def test_rows_get_the_common_values_and_the_models_defaults(step):
    insert_new(
        SiteResult,
        [{"site_id": "a" * 24, "sid": "p1aaaa", "update_group": 3}, {"site_id": "b" * 24, "sid": "p1bbbb", "update_group": None}],
        step_id=step.pk,
        batch_index=2,
        batch_name="launched 3",
    )  # fmt: skip

    rows = list(SiteResult.objects.filter(step=step).order_by("site_id"))
    assert [(r.site_id, r.sid, r.update_group) for r in rows] == [
        ("a" * 24, "p1aaaa", 3),
        ("b" * 24, "p1bbbb", None),
    ]
    for row in rows:
        assert (row.batch_index, row.batch_name, row.state, row.attempts) == (
            2,
            "launched 3",
            SiteState.PENDING,
            0,
        )
        assert (row.path, row.message, row.response, row.http_status, row.needs_check) == (
            "",
            "",
            None,
            None,
            False,
        )


def test_a_site_already_stored_keeps_its_first_batch(step):
    insert_new(SiteResult, [{"site_id": "a" * 24}], step_id=step.pk, batch_index=0, batch_name="first")

    insert_new(
        SiteResult,
        [{"site_id": "a" * 24}, {"site_id": "c" * 24}],
        step_id=step.pk,
        batch_index=1,
        batch_name="second",
    )

    stored = dict(SiteResult.objects.filter(step=step).values_list("site_id", "batch_name"))
    assert stored == {"a" * 24: "first", "c" * 24: "second"}


def test_an_unknown_column_is_refused_naming_it_and_nothing_is_stored(step):
    with pytest.raises(ValueError, match="SiteResult has no column \\['colour'\\]"):
        insert_new(SiteResult, [{"site_id": "a" * 24, "colour": "red"}], step_id=step.pk)

    assert not SiteResult.objects.filter(step=step).exists()
