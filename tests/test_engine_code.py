"""Code-item steps against a simulated Atlas, run in-process: reuse, commit clashes, step 9."""

import os

import pytest
import requests

from releases import services
from releases.models import StepRun
from releases.states import StepState
from tests.support import R, T, code_items, configure_environments, make_user, sites
from tests.test_engine_faults import run_inline

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dev(simulator):
    sim = simulator("dev", password=os.environ["ATLAS_DEV_PASSWORD"])
    configure_environments({"DEV": sim})
    return sim


def _post_code(sim, commit: str, version: str, is_current: bool = False) -> None:
    payload = {
        "git_url": "https://github.com/CuBoulder/express.git",
        "commit_hash": commit,
        "meta": {"name": "express", "version": version, "code_type": "profile", "is_current": is_current},
        "deploy": {"registry_rebuild": False, "cache_clear": True, "update_database": True},
    }
    auth = ("release-portal", os.environ["ATLAS_DEV_PASSWORD"])
    response = requests.post(sim.url + "code", json=payload, auth=auth, timeout=10)
    assert response.status_code == 201, response.text


def test_deploy_reuses_an_existing_item_with_the_same_name_and_version(dev):
    _post_code(dev, R, "2.8.5")
    user = make_user()
    step = services.get_step(services.create_plan("2.8.5", commit=R, user=user), 2)

    assert run_inline(step, user) == StepState.SUCCEEDED

    step.refresh_from_db()
    (item,) = code_items(dev, **{"meta.version": "2.8.5"})
    assert step.result["reused"] is True and step.result["code_id"] == str(item["_id"])
    assert item["meta"]["is_current"] is True, "step 2 makes the reused item current"
    assert len(dev.events.of_kind("code_deploy")) == 1, "no second POST /code"


def test_deploy_stops_with_an_explanation_when_another_item_uses_the_commit(dev):
    _post_code(dev, R, "2.8.5-dev-build")
    user = make_user()
    step = services.get_step(services.create_plan("2.8.5", commit=R, user=user), 2)

    assert run_inline(step, user) == StepState.FAILED

    step.refresh_from_db()
    assert f"commit {R} is already used on DEV by code item express 2.8.5-dev-build" in step.message
    assert code_items(dev, **{"meta.version": "2.8.5"}) == []


def test_update_code_sends_the_hash_and_is_current_in_separate_patches(simulator):
    sim = simulator("test", password=os.environ["ATLAS_TEST_PASSWORD"])
    configure_environments({"TEST": sim})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    for number in (2, 3, 4):
        services.skip(services.get_step(plan, number), user, "only TEST steps are tested")
    assert run_inline(services.get_step(plan, 5), user) == StepState.SUCCEEDED
    assert run_inline(services.get_step(plan, 6), user) == StepState.SUCCEEDED
    item_id = str(code_items(sim, **{"meta.version": "2.8.5"})[0]["_id"])
    StepRun.objects.filter(plan=plan, number=8).update(state=StepState.SKIPPED, message="DEV not tested")
    services.finalize(plan, tag="2.8.5", commit=T, user=user)
    on_item = sites(sim, **{"code.profile": code_items(sim, **{"meta.version": "2.8.5"})[0]["_id"]})
    assert len(on_item) > 100, "step 6 put the launched sites on the item"

    assert run_inline(services.get_step(plan, 9), user) == StepState.SUCCEEDED

    (item,) = code_items(sim, **{"meta.version": "2.8.5"})
    assert item["commit_hash"] == T and item["meta"]["is_current"] is True
    cascaded = {e["id"] for e in sim.events.of_kind("cascade")}
    assert cascaded == {str(s["_id"]) for s in on_item}, "the hash PATCH (without meta) cascaded"
    updates = [e for e in sim.events.of_kind("code_update") if e["id"] == item_id]
    assert len(updates) == 2, "two PATCHes: the hash, then is_current"
