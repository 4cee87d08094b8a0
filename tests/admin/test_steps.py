"""The step page: progress, batches, ETA, activity, failures by error, site rows and the sweep,
in a bounded number of queries with 20,000 site rows."""

from datetime import timedelta

import pytest
from django.utils import timezone

from releases.models import SiteResult, StepRun
from tests.admin_helpers import url

pytestmark = pytest.mark.django_db
ROWS, BATCHES = 20_000, 10


@pytest.fixture
def big_step(plan):
    """Step 14 running with 20,000 sites in 10 batches: batches 1-4 done, 5 in flight, 6-10 waiting."""
    now = timezone.now()
    step = StepRun.objects.get(plan=plan, number=14)
    step.state, step.started_at = "running", now - timedelta(seconds=100)
    step.activity, step.lease_owner = "writing batch 5 of 10 (launched group 1)", "worker-1@host"
    step.lease_expires_at = now + timedelta(seconds=30)
    step.result = {
        "batches": [{"name": f"group {i}", "where": {"update_group": i}, "count": ROWS // BATCHES} for i in range(BATCHES)],
        "sweep": [
            {"_id": "a" * 24, "sid": "p1aaaa", "path": "left-1", "status": "launched", "update_group": 7},
            {"_id": "b" * 24, "sid": "p1bbbb", "path": "left-2", "status": "launched", "update_group": 7},
            {"_id": "c" * 24, "sid": "p1cccc", "path": "left-3", "status": "installed", "update_group": 2},
        ],
    }  # fmt: skip
    step.save()
    rows = []
    for i in range(ROWS):
        batch = i // (ROWS // BATCHES)
        state, message, http = "pending", "", None
        if batch < 4:
            state, http = "succeeded", 200
            if i % 500 == 0:
                state, http, message = "failed", 422, "code.profile: value does not exist"
            elif i % 700 == 0:
                state, http, message = "failed", 409, "site is locked"
        elif batch == 4 and i % 2 == 0:
            state = "dispatched"
        rows.append(
            SiteResult(
                step=step, site_id=f"{i:024x}", path=f"site-{i}", batch_index=batch, batch_name=f"group {batch}",
                state=state, http_status=http, message=message, response={"_error": message} if message else None,
                finished_at=now - timedelta(seconds=50) if state in ("succeeded", "failed") else None,
            )
        )  # fmt: skip
    SiteResult.objects.bulk_create(rows, batch_size=2000)
    return step


def test_step_page_answers_in_bounded_queries_with_20000_sites(
    client, operator, plan, big_step, django_assert_max_num_queries
):
    client.force_login(operator)
    with django_assert_max_num_queries(16):
        response = client.get(url("step", plan, 14))
    assert response.status_code == 200
    counts = response.context["progress"]["counts"]
    assert counts["targeted"] == ROWS and counts["in_flight"] == 1000 and counts["remaining"] == 11_000
    assert counts["succeeded"] + counts["failed"] == 8000
    assert len(response.context["sites"]["page"].object_list) == 100


def test_plan_and_fragments_answer_in_bounded_queries_with_20000_sites(
    client, operator, plan, big_step, django_assert_max_num_queries
):
    client.force_login(operator)
    for name, args in (("change", ()), ("live", ()), ("step_live", (14,))):
        with django_assert_max_num_queries(16):
            assert client.get(url(name, plan, *args)).status_code == 200


def test_step_page_shows_batches_elapsed_eta_and_what_it_is_doing(client, operator, plan, big_step):
    client.force_login(operator)
    response = client.get(url("step", plan, 14))
    p = response.context["progress"]
    assert [b["name"] for b in p["batches"]] == [f"group {i}" for i in range(BATCHES)]
    assert p["batches"][4]["in_flight"] == 1000 and p["batches"][9]["remaining"] == 2000
    assert p["elapsed"].startswith("1 min 4") and p["eta"].startswith("about 2 min")  # 8,000 in 100 s: 80/s
    html = response.content.decode()
    assert "Now: writing batch 5 of 10 (launched group 1)" in html
    assert 'title="worker-1@host">A worker is on it.' in html  # plain words; the worker's name on hover
    assert "Lease:" not in html and "working (no activity reported yet)" not in html


def test_failures_are_grouped_by_error_with_atlas_answer_and_a_link_to_their_rows(
    client, operator, plan, big_step
):
    client.force_login(operator)
    response = client.get(url("step", plan, 14))
    groups = {(g["http_status"], g["message"]): g["n"] for g in response.context["failures"]}
    assert groups == {
        (422, "code.profile: value does not exist"): 16,
        (409, "site is locked"): 9,
    }  # every 700th, less every 3500th
    html = response.content.decode()
    assert "?state=failed&amp;message=site%20is%20locked" in html
    filtered = client.get(url("step", plan, 14), {"state": "failed", "message": "site is locked"})
    assert filtered.context["sites"]["page"].paginator.count == 9


def test_site_rows_filter_by_batch_and_state_and_paginate(client, operator, plan, big_step):
    client.force_login(operator)
    response = client.get(url("step", plan, 14), {"batch": "4", "state": "dispatched", "page": "3"})
    page = response.context["sites"]["page"]
    assert page.paginator.count == 1000 and page.number == 3
    assert {s.state for s in page.object_list} == {"dispatched"} and {
        s.batch_index for s in page.object_list
    } == {4}
    assert "batch=4&amp;state=dispatched&amp;page=4" in response.content.decode()


def test_the_sweep_is_grouped_and_linked_to_atlas(client, operator, plan, big_step):
    client.force_login(operator)
    response = client.get(url("step", plan, 14))
    sweep = response.context["sweep"]
    groups = [
        (g["status"], g["update_group"], len(g["sites"])) for r in sweep["reasons"] for g in r["groups"]
    ]
    assert groups == [("installed", 2, 1), ("launched", 7, 2)]
    api = big_step.environment.api_url.rstrip("/")
    assert f'href="{api}/sites/{"a" * 24}"' in response.content.decode()


def test_the_step_fragment_refreshes_the_filtered_site_rows_too(client, operator, plan, big_step):
    client.force_login(operator)
    page = client.get(url("step", plan, 14), {"batch": "4", "state": "dispatched"}).content.decode()
    assert url("step_live", plan, 14) + "?batch=4&amp;state=dispatched" in page
    assert page.count('id="step-site-rows"') == 1
    SiteResult.objects.filter(step=big_step, batch_index=4, state="dispatched").update(state="succeeded")
    fragment = client.get(url("step_live", plan, 14), {"batch": "4", "state": "dispatched"}).content.decode()
    assert 'id="step-site-rows" data-live' in fragment and "No site rows match" in fragment


def test_a_delete_steps_sites_to_check_are_named_on_its_page(client, operator, plan):
    step = StepRun.objects.get(plan=plan, number=13)
    step.state, step.message = "failed", "1 succeeded, 1 failed, 0 skipped"
    step.save()
    SiteResult.objects.bulk_create(
        [
            SiteResult(step=step, site_id="a" * 24, path="gone-live", state="failed", needs_check=True,
                       message="instance possibly destroyed while the site was 'installed'"),
            SiteResult(step=step, site_id="b" * 24, path="pool-1", state="succeeded"),
        ]
    )  # fmt: skip
    client.force_login(operator)

    page = client.get(url("step", plan, 13)).content.decode()

    assert "Check in Atlas: 1 site may have lost its instance" in page
    assert "gone-live" in page and "a" * 24 in page


def test_batches_not_yet_recorded_are_named_after_their_update_group_and_numbered_from_1(
    client, operator, plan
):
    step = StepRun.objects.get(plan=plan, number=14)
    step.state, step.lease_owner = "running", "worker-1@host"
    step.activity = "pausing 1 s before batch 3"
    step.result = {"batches": [{"name": "installed group 0", "where": {}, "count": 1},
                               {"name": "installed group 1", "where": {}, "count": 1}]}  # fmt: skip
    step.save()
    SiteResult.objects.bulk_create(
        SiteResult(step=step, site_id=f"{i:024x}", path=f"s{i}", batch_index=i, batch_name="")
        for i in range(4)
    )
    client.force_login(operator)
    response = client.get(url("step", plan, 14))
    batches = response.context["progress"]["batches"]
    assert [(b["number"], b["name"]) for b in batches] == [
        (1, "installed group 0"), (2, "installed group 1"), (3, "installed group 2"), (4, "launched group 0"),
    ]  # fmt: skip
    html = response.content.decode()
    assert "Now: pausing 1 s before batch 3" in html
    assert '<td>3</td><td><a href="?batch=2">installed group 2</a></td>' in html  # the same batch 3
    assert ">3. installed group 2</option>" in html
    assert "batch 4" not in html


def test_the_sweep_says_why_and_what_to_do_with_a_link_near_the_top(client, operator, plan):
    step = StepRun.objects.get(plan=plan, number=14)
    step.state = "succeeded"
    left = [
        ("locked", 3),
        ("launched", 10),
        ("launched", 8),
        ("launched", 9),
        ("launched", 7),
        ("launched", 3),
    ]
    step.result = {
        "sweep": [
            {"_id": f"{i:024x}", "sid": f"p{i}", "path": f"left-{i}", "status": status, "update_group": group}
            for i, (status, group) in enumerate(left)
        ]
    }
    step.save()
    client.force_login(operator)
    response = client.get(url("step", plan, 14))
    sweep = response.context["sweep"]
    assert sweep["total"] == 6 and sweep["needs_action"] == 1
    reasons = {r["code"]: [(g["status"], g["update_group"]) for g in r["groups"]] for r in sweep["reasons"]}
    assert list(reasons) == ["late", "locked", "outside"]  # what needs action first
    assert reasons["late"] == [("launched", 3)]  # a batch of the step covers it: not expected
    assert reasons["locked"] == [("locked", 3)]
    assert reasons["outside"] == [
        ("launched", 7),
        ("launched", 8),
        ("launched", 9),
        ("launched", 10),
    ]  # numeric
    html = response.content.decode()
    summary = html.split('id="sweep-summary">')[1].split("</p>")[0]
    assert '<a href="#step-sweep">6 sites still not on the release profile</a>' in summary
    assert "1 needs action" in summary
    assert html.index('id="sweep-summary"') < html.index('id="step-progress"') < html.index('id="step-sweep"')
    assert "Expected: Atlas leaves a locked site alone" in html
    assert "Expected: no batch of the release covers their status and update group" in html


def test_a_finalize_step_page_says_what_it_waits_for(client, operator, plan):
    client.force_login(operator)
    html = client.get(url("step", plan, 7)).content.decode()
    hint = html.split('id="step-hint">')[1].split("</p>")[0]
    assert hint == "Finalize opens when DEV steps 2–4 and TEST steps 5–6 have succeeded (or been skipped)"
    assert "operations on the plan page" not in html
