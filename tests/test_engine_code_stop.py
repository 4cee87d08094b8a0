"""Stop and abort mean stop, also inside step 9 (issue 17 item 4), judged from Atlas's side.

TEST step 9 sends two PATCHes: the commit (Atlas cascades it to every site on the item, inside the
request, for minutes on a real Atlas), then `meta.is_current` (which demotes the current item). A
pause or abort that comes while the first is inside Atlas lets it finish, then sends nothing more:
the step says what was stored and what was not, and a resume sends only the second PATCH.
"""

from __future__ import annotations

import threading
import time

import pytest

from atlas.simulator import SimulatorServer
from releases import services
from releases.models import StepRun
from releases.states import StepState
from tests.support import R, T, code_items, configure_environments, make_user, run_engine, tasks_not_sent
from tests.test_engine_faults import release_item, wait_for
from tests.test_engine_safety import reach

pytestmark = pytest.mark.django_db(transaction=True)

ON_ITEM = 30  # sites on the release item; at 100 ms each the cascade keeps the PATCH in Atlas ~3 s


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def step_9_with_sites_on_the_item(sim: SimulatorServer) -> tuple[StepRun, object, str, list[str]]:
    """TEST pointed at `sim`, a release whose step 9 is next (the item deployed by step 5, not
    current), and `ON_ITEM` sites on the item (as after step 6). Returns the step, the operator,
    the item's id and the sites' ids."""
    configure_environments({"TEST": sim})
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 9)
    item = release_item(sim)
    assert item["meta"]["is_current"] is False
    with sim.lock:
        found = sim.db["sites"].find({"_deleted": {"$ne": True}, "status": "launched"}, {"_id": 1})
        ids = [site["_id"] for site in list(found)[:ON_ITEM]]
        sim.db["sites"].update_many({"_id": {"$in": ids}}, {"$set": {"code.profile": item["_id"]}})
    assert len(ids) == ON_ITEM
    sim.set_faults(cascade_delay_ms=100)
    sim.injector.record = True
    return step, user, str(item["_id"]), [str(i) for i in ids]


def stop_inside_the_commit_patch(sim: SimulatorServer, step: StepRun, user, action) -> tuple[str, float]:
    """Launch step 9 and run it here; `action` (pause or abort) is asked for while the commit
    PATCH's cascade runs in Atlas. Returns how the step ended and when the request was made."""
    with tasks_not_sent():
        services.launch(step, user)
    ended: list = []
    thread = threading.Thread(target=lambda: ended.append(run_engine(step)))
    thread.start()
    wait_for(lambda: sim.events.of_kind("cascade"), timeout=30, what="the commit PATCH's cascade")
    asked_at = time.time()
    action(step.plan, user)
    assert not sim.events.of_kind("cascade_end"), "the request came while the commit PATCH was in Atlas"
    thread.join(60)
    assert not thread.is_alive()
    return ended[0], asked_at


def patches_of(sim: SimulatorServer, code_id: str, since: int = 0) -> list[list]:
    """[method, path, arrived, answered, status] of every PATCH of the code item Atlas received."""
    return [
        entry
        for entry in sim.injector.requests[since:]
        if entry[0] == "PATCH" and entry[1].rstrip("/").endswith(f"/code/{code_id}")
    ]


def code_updates(sim: SimulatorServer, code_id: str) -> list[dict]:
    return [e for e in sim.events.of_kind("code_update") if e["id"] == code_id]


def assert_stored_not_current(sim: SimulatorServer, step: StepRun, code_id: str, asked_at: float) -> None:
    """From Atlas's side: the commit PATCH landed (once, cascaded once per site), nothing reached
    Atlas's code items after the request, the old current item is still current."""
    assert [e["commit_hash"] for e in code_updates(sim, code_id)] == [T], "only the commit PATCH"
    (commit_patch,) = patches_of(sim, code_id)
    assert commit_patch[2] < asked_at and commit_patch[4] == 200
    late = [e for e in sim.injector.requests if e[0] != "GET" and e[2] >= asked_at]
    assert late == [], f"writes reached Atlas after the stop request: {late}"
    assert sim.events.of_kind("demote") == [], "the old current item was demoted"
    item = release_item(sim)
    assert item["commit_hash"] == T and item["meta"]["is_current"] is False
    (current,) = code_items(sim, **{"meta.name": "express", "meta.is_current": True})
    assert current["meta"]["version"] == "2.8.4"
    step.refresh_from_db()
    assert f"commit {T[:12]} stored on code item {code_id} (Atlas cascaded it to {ON_ITEM} sites)" in (
        step.message
    )
    assert "not made current" in step.message
    assert step.result["commit_patch"] == "answered" and "made_current" not in step.result


def test_an_abort_during_step_9s_commit_patch_sends_no_is_current_patch(simulator):
    sim = simulator.of("TEST")
    step, user, code_id, ids = step_9_with_sites_on_the_item(sim)

    state, asked_at = stop_inside_the_commit_patch(sim, step, user, services.abort)

    assert state == StepState.ABORTED
    wait_for(lambda: sim.events.of_kind("cascade_end"), timeout=30, what="the cascade's end")
    time.sleep(0.3)  # anything still on its way from the engine would have arrived by now
    assert_stored_not_current(sim, step, code_id, asked_at)
    assert step.message.startswith("aborted by the operator: ")
    assert step.message.endswith("not made current: launch the step again to finish")
    assert sorted(sim.events.ids("cascade")) == sorted(ids)


def test_a_pause_during_step_9s_commit_patch_stops_and_a_resume_only_makes_the_item_current(simulator):
    sim = simulator.of("TEST")
    step, user, code_id, ids = step_9_with_sites_on_the_item(sim)

    state, asked_at = stop_inside_the_commit_patch(sim, step, user, services.pause)

    assert state == StepState.PAUSED
    assert_stored_not_current(sim, step, code_id, asked_at)
    assert step.message.startswith("paused by the operator: ")
    assert step.message.endswith("not made current: resume to finish")

    before = len(sim.injector.requests)
    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED, step.message

    resumed = sim.injector.requests[before:]
    (make_current,) = patches_of(sim, code_id, since=before)
    assert make_current[4] == 200, "If-Match from a fresh read: no 412"
    assert any(
        e[0] == "GET" and e[1].rstrip("/").endswith(f"/code/{code_id}") and e[2] < make_current[2]
        for e in resumed
    ), "the item was read again before its PATCH"
    assert [e["commit_hash"] for e in code_updates(sim, code_id)] == [T, None], "no second commit PATCH"
    assert sorted(sim.events.ids("cascade")) == sorted(ids), "the cascade ran once per site"
    assert len(sim.events.of_kind("demote")) == 1
    item = release_item(sim)
    assert item["commit_hash"] == T and item["meta"]["is_current"] is True
    step.refresh_from_db()
    assert step.result["made_current"] is True
