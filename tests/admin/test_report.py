"""Issue 8, the release report: durations per step and batch and sites per minute computed from
the recorded timestamps (checked against a step run here against the simulator, and against
timestamps set by the test), carried by `release status --json`, and the report page, with bounded
queries for a release of 20,000 site results."""

import json
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from releases import reports, services
from releases.models import SiteResult, StepRun
from releases.states import SiteState, StepState
from tests.support import R, configure_environments, make_user
from tests.test_engine_faults import client_updates, prepare_prod, run_inline, start_prod

PAUSE = 0.4  # seconds between batches: the report must not count it inside a batch


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _status_json(version: str) -> dict:
    out = StringIO()
    call_command("release", "status", version, "--json", stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_report_figures_are_the_recorded_timestamps_of_a_step_run_here(client):
    sim = start_prod(200)
    try:
        configure_environments({"PROD": sim}, batch_pause_seconds=PAUSE)
        user = make_user()
        plan = services.create_plan("2.8.5", commit=R, user=user)
        step = prepare_prod(plan, user)
        began = time.time()
        assert run_inline(step, user) == StepState.SUCCEEDED
        wall = time.time() - began
        updated_by_client = len(set(client_updates(sim)))
    finally:
        sim.stop()
    step = StepRun.objects.get(pk=step.pk)
    figures = reports.durations(plan)
    (row,) = [s for s in figures["steps"] if s["number"] == 14]

    assert row["duration_seconds"] == pytest.approx(
        (step.finished_at - step.started_at).total_seconds(), abs=1e-3
    )
    assert 0 < row["duration_seconds"] <= wall + 0.01
    assert len(row["batches"]) == len(step.result["batches"]) == 10
    previous_end = step.started_at
    for batch in row["batches"]:
        index = batch["index"]
        start = _epoch(step.result["batch_started_at"][str(index)])
        end = _epoch(step.result["batch_finished_at"][str(index)])
        assert batch["name"] == step.result["batches"][index]["name"]
        assert (batch["started_at"], batch["finished_at"]) == (start.isoformat(), end.isoformat())
        assert batch["duration_seconds"] == pytest.approx((end - start).total_seconds(), abs=1e-3)
        if index:  # the pause between batches lies between them, not inside one
            assert (start - previous_end).total_seconds() >= PAUSE - 0.05
        rows = SiteResult.objects.filter(step=step, batch_index=index)
        assert batch["sites"] == rows.count()
        assert batch["succeeded"] == rows.filter(state=SiteState.SUCCEEDED).count()
        assert all(start <= r.finished_at <= end for r in rows if r.finished_at)
        previous_end = end
    prod = figures["environments"]["PROD"]
    updated = SiteResult.objects.filter(step=step, state=SiteState.SUCCEEDED).count()
    assert prod["sites_updated"] == updated == updated_by_client > 100
    assert prod["sites_per_minute"] == pytest.approx(updated * 60 / row["duration_seconds"], rel=1e-3)

    status = _status_json(plan.version)
    assert status["durations"]["steps"] == figures["steps"]
    assert status["durations"]["environments"] == figures["environments"]

    client.force_login(user)
    page = client.get(reverse("admin:releases_releaseplan_report", args=[plan.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert '<polyline class="series" data-environment="PROD"' in html
    assert f"({updated} sites)" in html


T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
BATCH = 5_000  # sites per batch; four batches
FAILED = 100


def _recorded_release(user):
    """A PROD step 14 of 20,000 site results with timestamps set here: batch i writes from
    T0 + 10 min × i for 8 min (2 min pause between), one site every 8 min / 5,000."""
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = plan.steps.get(number=14)
    ends = {str(i): (T0 + timedelta(minutes=10 * i + 8)).timestamp() for i in range(4)}
    StepRun.objects.filter(pk=step.pk).update(
        state=StepState.FAILED,
        started_at=T0,
        finished_at=T0 + timedelta(minutes=38),
        message=f"{FAILED} failed: retry the failed sites, skip or abort",
        result={
            "batches": [{"name": f"batch {i}", "where": {}, "count": BATCH} for i in range(4)],
            "batch_started_at": {str(i): (T0 + timedelta(minutes=10 * i)).timestamp() for i in range(4)},
            "batch_finished_at": ends,
            "sweep": [
                {
                    "_id": "x" * 24,
                    "sid": "p1abc",
                    "path": "left-behind",
                    "status": "launched",
                    "update_group": 3,
                }
            ],
        },
    )
    step_per_site = timedelta(minutes=8) / BATCH
    rows = []
    for i in range(4 * BATCH):
        batch, k = divmod(i, BATCH)
        failed = i < FAILED
        rows.append(
            SiteResult(step=step, site_id=f"{i:024x}", sid=f"p1{i:010x}", path=f"site-{i}", batch_index=batch,
                       batch_name=f"batch {batch}", state=SiteState.FAILED if failed else SiteState.SUCCEEDED,
                       http_status=503 if failed else 200, attempts=5 if failed else 1,
                       message="Atlas answered 503" if failed else "",
                       finished_at=T0 + timedelta(minutes=10 * batch) + step_per_site * (k + 1))
        )  # fmt: skip
    SiteResult.objects.bulk_create(rows, batch_size=2000)
    return plan


@pytest.mark.django_db
def test_report_of_20000_site_results_is_exact_with_bounded_queries(client, django_assert_max_num_queries):
    call_command("loadrunbook", verbosity=0)
    user = make_user()
    plan = _recorded_release(user)
    client.force_login(user)

    with django_assert_max_num_queries(14):
        page = client.get(reverse("admin:releases_releaseplan_report", args=[plan.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    figures = page.context["report"]["durations"]
    (row,) = [s for s in figures["steps"] if s["number"] == 14]
    assert row["duration_seconds"] == 38 * 60
    assert [b["duration_seconds"] for b in row["batches"]] == [480.0] * 4
    assert [b["sites"] for b in row["batches"]] == [BATCH] * 4
    assert row["batches"][0]["succeeded"] == BATCH - FAILED
    assert row["batches"][1]["sites_per_minute"] == BATCH / 8
    prod = figures["environments"]["PROD"]
    assert prod["sites_updated"] == 4 * BATCH - FAILED
    assert prod["sites_per_minute"] == pytest.approx((4 * BATCH - FAILED) / 38, abs=0.01)
    per_minute = page.context["report"]["updates"]["per_minute"]["PROD"]
    assert sum(p["sites"] for p in per_minute) == 4 * BATCH - FAILED
    assert max(p["sites"] for p in per_minute) == pytest.approx(BATCH / 8, abs=2)  # 625 a minute
    assert "8 min 00 s" in html and "38 min 00 s" in html
    assert html.count('class="failure"') == reports.FAILURES_SHOWN
    assert "Failures (100)" in html
    assert "left-behind" in html
    assert '<polyline class="series" data-environment="PROD"' in html


@pytest.mark.django_db
def test_report_page_needs_view_permission_on_plans(client):
    call_command("loadrunbook", verbosity=0)
    plan = services.create_plan("2.8.5", commit=R, user=make_user())
    client.force_login(make_user("nobody", permissions=()))
    assert client.get(reverse("admin:releases_releaseplan_report", args=[plan.pk])).status_code == 403
