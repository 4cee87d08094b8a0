"""The whole runbook, steps 1–14, across three simulated Atlas environments and a real worker.

After each stage the Atlas state is checked the way a release manager would check it.
"""

from collections import Counter

import pytest
from bson import ObjectId

from releases import reports, services
from releases.models import AuditEvent
from tests.support import (
    R,
    T,
    code_items,
    configure_environments,
    make_user,
    sites,
    states,
    wait_until_idle,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def sims(simulator):
    return simulator.all(prod_sites=400, pool_refill_delay=0.2)


def _release_item(sim, version="2.8.5"):
    (item,) = code_items(sim, **{"meta.name": "express", "meta.version": version})
    return item


def _stage(plan, user, env):
    services.launch(services.next_step(plan, env), user, stage=True)
    return wait_until_idle(plan)


def test_whole_release_across_three_environments(sims, celery_worker):
    configure_environments(sims, verify=True)  # the whole release as deployed: sites verified
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    dev_before = {s["_id"]: s["code"]["profile"] for s in sites(sims["DEV"])}
    test_group13 = {s["_id"]: s["code"]["profile"] for s in sites(sims["TEST"], update_group=13)}

    _stage(plan, user, "DEV")
    assert {n: s for n, s in states(plan).items() if n <= 4} == {
        1: "succeeded",
        2: "succeeded",
        3: "succeeded",
        4: "succeeded",
    }
    p_dev = _release_item(sims["DEV"])
    assert p_dev["meta"]["is_current"] is True and p_dev["commit_hash"] == R
    on_release = {s["path"] for s in sites(sims["DEV"], **{"code.profile": p_dev["_id"]})}
    assert {"webcentral", "homepage"} <= on_release
    available = sites(sims["DEV"], status="available")
    assert available and all(s["code"]["profile"] == p_dev["_id"] for s in available)
    # Feature sites on DEV were left alone.
    for site in sites(sims["DEV"], status={"$ne": "available"}):
        if site["path"] not in ("webcentral", "homepage") and site["_id"] in dev_before:
            assert site["code"]["profile"] == dev_before[site["_id"]]

    _stage(plan, user, "TEST")
    assert states(plan)[5] == "succeeded" and states(plan)[6] == "succeeded" and states(plan)[7] == "pending"
    p_test = _release_item(sims["TEST"])
    assert p_test["meta"]["is_current"] is False
    launched = sites(sims["TEST"], status="launched")
    assert all(s["code"]["profile"] == p_test["_id"] for s in launched if s.get("update_group") != 13)
    assert {s["_id"]: s["code"]["profile"] for s in sites(sims["TEST"], update_group=13)} == test_group13

    services.finalize(plan, tag="2.8.5", commit=T, user=user)
    assert states(plan)[7] == "succeeded"

    _stage(plan, user, "DEV")
    assert states(plan)[8] == "succeeded"
    assert _release_item(sims["DEV"])["commit_hash"] == T

    _stage(plan, user, "TEST")
    assert [states(plan)[n] for n in (9, 10, 11)] == ["succeeded"] * 3
    p_test = _release_item(sims["TEST"])
    assert p_test["commit_hash"] == T and p_test["meta"]["is_current"] is True
    current = code_items(sims["TEST"], **{"meta.name": "express", "meta.is_current": True})
    assert [c["_id"] for c in current] == [p_test["_id"]]
    for status in ("installed", "available"):
        assert all(s["code"]["profile"] == p_test["_id"] for s in sites(sims["TEST"], status=status))

    _stage(plan, user, "PROD")
    assert [states(plan)[n] for n in (12, 13, 14)] == ["succeeded"] * 3
    p_prod = _release_item(sims["PROD"])
    assert p_prod["commit_hash"] == T and p_prod["meta"]["is_current"] is True
    for site in sites(sims["PROD"], status={"$in": ["installed", "available"]}):
        assert site["code"]["profile"] == p_prod["_id"]
    for site in sites(sims["PROD"], status="launched", update_group={"$lte": 6}):
        assert site["code"]["profile"] == p_prod["_id"]

    status = reports.status(plan)
    assert status["state"] == "succeeded"
    swept = {s["_id"] for s in status["sweeps"]["PROD"]}
    legacy = {str(s["_id"]) for s in sites(sims["PROD"], status="launched", update_group={"$gte": 7})}
    assert legacy and legacy <= swept, "legacy groups 7-13 are reported, not updated"
    for site in sites(sims["PROD"], _id={"$in": [ObjectId(i) for i in legacy]}):
        assert site["code"]["profile"] != p_prod["_id"]

    for name, sim in sims.items():
        # The portal's own PATCHes; step 8 and 9's code-item cascades re-PATCH sites by design.
        updates = Counter(e["id"] for e in sim.events.of_kind("site_update") if e["source"] == "client")
        assert not [i for i, n in updates.items() if n > 1], f"{name}: a site got the profile PATCH twice"
    assert AuditEvent.objects.filter(action="launch", username="ops-lead").count() >= 4


def test_cli_stage_launch_waits_and_reports_status(sims, celery_worker):
    import io
    import json

    from django.core.management import call_command

    configure_environments(sims, verify=True)  # the whole release as deployed: sites verified
    make_user()
    call_command("release", "create", "2.8.5", "--commit", R, "--user", "ops-lead", stdout=io.StringIO())
    call_command(
        "release", "launch", "2.8.5", "--stage", "DEV", "--user", "ops-lead", "--yes", "--wait",
        stdout=io.StringIO(), stderr=io.StringIO(),
    )  # fmt: skip
    out = io.StringIO()
    call_command("release", "status", "2.8.5", "--json", stdout=out)
    status = json.loads(out.getvalue())
    by_number = {s["number"]: s for s in status["steps"]}
    assert [by_number[n]["state"] for n in (1, 2, 3, 4)] == ["succeeded"] * 4
    assert by_number[4]["launched_by"] == "ops-lead"
    assert by_number[4]["counts"]["succeeded"] == by_number[4]["counts"]["targeted"] == 2
    assert by_number[5]["state"] == "pending"
