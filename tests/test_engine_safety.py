"""Safe to trust with PROD: each behaviour judged from Atlas's side (the simulator's event log of
side effects) wherever it concerns Atlas, not from the portal's own rows.

- Deleting pool sites never destroys a site that left the pool; a DELETE that may have destroyed
  an instance is reported, never called "not deleted".
- One step, one worker, even during a code PATCH slower than the lease.
- A step never hangs silently; failures that are not about one site stop it and say so.
- What the operator confirmed is what runs.
"""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from unittest.mock import patch

import psutil
import pytest
from bson import ObjectId
from django.db import connection
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from atlas.simulator import SimulatorServer
from conftest import _database_url
from releases import reports, services
from releases.engine.context import LeaseLost
from releases.models import AuditEvent, Environment, SiteResult, StepRun, UpdateGroup
from releases.states import SiteState, StepState
from tests.support import (
    R,
    T,
    code_items,
    configure_environments,
    make_user,
    run_engine,
    tasks_not_sent,
    wait_until_idle,
)
from tests.test_engine_faults import (
    client_updates,
    prepare_prod,
    release_item,
    run_inline,
    site_counts,
    start_prod,
    wait_for,
)

DEPLOY_STEPS = {"DEV": 2, "TEST": 5, "PROD": 12}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def reach(plan, user, number: int) -> StepRun:
    """Make step `number` launchable: its environment's deploy step runs here (the release item
    must exist), step 7 is recorded, everything else before it is skipped."""
    target = services.get_step(plan, number)
    for step in plan.steps.order_by("number").filter(number__lt=number, number__gt=1):
        if step.number == 7:
            services.finalize(plan, tag=plan.version, commit=T, user=user)
        elif step.number == DEPLOY_STEPS.get(target.environment.name):
            assert run_inline(step, user) == StepState.SUCCEEDED, step.message
        else:
            services.skip(step, user, "not needed by this test")
    return services.get_step(plan, number)


def step_14(prod_sim, **environment) -> tuple[StepRun, object]:
    """PROD pointed at `prod_sim`, a release whose step 14 is next, and the operator."""
    configure_environments({"PROD": prod_sim}, **environment)
    user = make_user()
    return prepare_prod(services.create_plan("2.8.5", commit=R, user=user), user), user


def probe_of(log: list[list]) -> list:
    """The credentials probe in the simulator's request log (exactly one)."""
    (probe,) = [e for e in log if e[0] == "PATCH" and e[1].startswith("/code/")]
    return probe


def step_8_with_every_site_on_the_item(dev: SimulatorServer) -> tuple[StepRun, object, list]:
    """DEV pointed at `dev`, a release whose step 8 is next, and every DEV site already on the
    release item (as after steps 3 and 4), so its commit PATCH cascades to all of them.
    Returns the step, the operator and the sites' ids."""
    configure_environments({"DEV": dev})
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 8)
    item = release_item(dev)
    with dev.lock:
        dev.db["sites"].update_many({"_deleted": {"$ne": True}}, {"$set": {"code.profile": item["_id"]}})
        ids = [s["_id"] for s in dev.db["sites"].find({"_deleted": {"$ne": True}}, {"_id": 1})]
    return step, user, ids


def give_up_code_patch_answers_after_one_second(monkeypatch) -> Callable[[], None]:
    """Clients built from now on give up waiting for a PATCH /code's answer after 1 s (Atlas
    still applies it); returns the function that restores the real clients."""
    real_client = Environment.client

    def client(self):
        atlas = real_client(self)
        atlas.code_write_timeout = (3.05, 1.0)
        return atlas

    monkeypatch.setattr(Environment, "client", client)
    return lambda: monkeypatch.setattr(Environment, "client", real_client)


def removals(sim: SimulatorServer) -> list[dict]:
    return sim.events.of_kind("site_remove")


# -- 1. deleting available sites ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("number, environment", [(3, "DEV"), (10, "TEST"), (13, "PROD")])
def test_pool_churn_during_a_delete_step_never_removes_a_site_that_left_the_pool(
    simulator, number, environment
):
    sim = simulator.of(environment, sites=None if environment == "DEV" else 300)
    # At a parallelism of 8, as PROD runs: deletions still go one at a time, so no DELETE of ours
    # arrives (and starts an install) between another site's read and its DELETE.
    # The churn keeps the pool from refilling: the step's wait for it is kept short.
    configure_environments({environment: sim}, parallelism=8, pool_wait_seconds=2)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, number)
    sim.set_faults(pool_take_rate=1.0)  # with every write, an install or restore takes a pool site

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    sim.set_faults()
    assert removals(sim), "the step deleted nothing"
    hit = [e for e in removals(sim) if e["status"] != "available"]
    assert hit == [], f"Atlas destroyed {len(hit)} sites that had left the pool"
    rows = SiteResult.objects.filter(step=step)
    taken = set(sim.events.ids("pool_take"))
    skipped = {r.site_id for r in rows if r.state == SiteState.SKIPPED}
    deleted = {r.site_id for r in rows if r.state == SiteState.SUCCEEDED}
    assert skipped, "the churn never reached a targeted site: the test shows nothing"
    assert skipped <= taken
    assert all("left the pool before deletion" in r.message for r in rows if r.state == SiteState.SKIPPED)
    assert deleted == {e["id"] for e in removals(sim)} and len(removals(sim)) == len(deleted)
    assert site_counts(step)[SiteState.FAILED] == 0


@pytest.mark.django_db(transaction=True)
def test_a_delete_racing_an_install_is_failed_as_possibly_destroyed_named_and_never_retried(simulator):
    sim = simulator.of("DEV")
    configure_environments({"DEV": sim}, parallelism=2)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 3)
    sim.set_faults(take_before_delete_rate=1.0)  # every install lands between our read and DELETE

    assert run_inline(step, user) in (StepState.FAILED, StepState.PAUSED)  # ended, or the threshold

    sim.set_faults()
    step.refresh_from_db()
    destroyed = {e["id"]: e["status"] for e in removals(sim)}
    assert destroyed and set(destroyed.values()) == {"installed"}
    assert max(Counter(e["id"] for e in removals(sim)).values()) == 1, "a DELETE was sent twice"
    failed = SiteResult.objects.filter(step=step, state=SiteState.FAILED)
    assert {r.site_id for r in failed} == destroyed.keys()
    assert all(r.needs_check for r in failed)
    assert all("possibly destroyed while the site was 'installed'" in r.message for r in failed)
    assert "possibly lost their instance" in step.message and failed[0].path in step.message

    # Retrying the failed sites leaves these alone: nothing more is sent for them.
    requests_before = len(sim.events.of_kind("site_remove"))
    services.retry_failed(step, user)
    assert run_engine(step) == StepState.FAILED
    step.refresh_from_db()
    assert len(sim.events.of_kind("site_remove")) == requests_before
    assert {
        r.site_id for r in SiteResult.objects.filter(step=step, state=SiteState.FAILED)
    } == destroyed.keys()
    assert "possibly lost their instance" in step.message and "retry the failed" not in step.message
    audited = AuditEvent.objects.filter(plan=step.plan, step_number=3).order_by("-id").first()
    assert failed[0].site_id in audited.message or failed[0].path in audited.message


@pytest.mark.django_db(transaction=True)
def test_installs_at_any_moment_never_destroy_an_unreported_site(simulator):
    """Atlas's own installs run on their own clock: the window between our read and our DELETE
    cannot be closed, but every instance a DELETE may have destroyed is reported for a check."""
    sim = simulator.of("PROD", sites=600)
    configure_environments({"PROD": sim}, parallelism=8)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 13)
    sim.set_faults(write_latency_ms=5)
    done = threading.Event()

    def installs() -> None:
        while not done.wait(0.004):
            sim.state.take_pool_site()

    churn = threading.Thread(target=installs, daemon=True)
    churn.start()
    try:
        run_inline(step, user)
    finally:
        done.set()
        churn.join()

    sim.set_faults()
    assert sim.events.of_kind("pool_take"), "the churn took nothing"
    reached = SiteResult.objects.filter(step=step).exclude(state=SiteState.SUCCEEDED).exists()
    assert reached, "the churn never took a targeted site: the test shows nothing"
    live = {e["id"] for e in removals(sim) if e["status"] != "available"}
    flagged = set(SiteResult.objects.filter(step=step, needs_check=True).values_list("site_id", flat=True))
    assert live <= flagged, f"{len(live - flagged)} destroyed live sites were not reported"
    assert flagged <= live | {e["id"] for e in removals(sim)}
    deleted = set(
        SiteResult.objects.filter(step=step, state=SiteState.SUCCEEDED).values_list("site_id", flat=True)
    )
    assert deleted <= {e["id"] for e in removals(sim) if e["status"] == "available"}


@pytest.mark.django_db(transaction=True)
def test_a_conflict_on_a_site_still_available_finishes_the_deletion_and_says_so(simulator):
    sim = simulator.of("PROD", sites=300)
    configure_environments({"PROD": sim}, parallelism=2)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 13)
    sim.set_faults(etag_race_rate=0.5)  # another writer touches half the sites before our DELETE

    state = run_inline(step, user)

    sim.set_faults()
    assert {e["status"] for e in removals(sim)} == {"available"}
    rows = list(SiteResult.objects.filter(step=step))
    after_conflict = [r for r in rows if "after a conflict" in r.message]
    assert after_conflict and all(r.state == SiteState.SUCCEEDED for r in after_conflict)
    undecided = [r for r in rows if r.state not in (SiteState.SUCCEEDED, SiteState.FAILED)]
    assert undecided == []
    assert state == (StepState.SUCCEEDED if site_counts(step)[SiteState.FAILED] == 0 else StepState.PAUSED)


# -- 2. one step, one worker --------------------------------------------------------------------


@pytest.mark.slow
def test_a_code_patch_slower_than_the_lease_is_sent_once_and_succeeds_after_its_cascade(
    simulator, start_worker
):
    dev = simulator.of("DEV")
    step, user, ids = step_8_with_every_site_on_the_item(dev)
    # The cascade takes ~150 ms a site: several times the 4 s lease of the test workers.
    dev.set_faults(cascade_delay_ms=150)
    start_worker("first")
    start_worker("second")

    services.launch(step, user)
    wait_until_idle(step.plan, timeout=90)

    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED, step.message
    patches = [e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T]
    assert len(patches) == 1, f"{len(patches)} PATCH /code with the final commit reached Atlas"
    cascaded = Counter(e["id"] for e in dev.events.of_kind("cascade"))
    assert len(cascaded) == len(ids) and set(cascaded.values()) == {1}
    (end,) = dev.events.of_kind("cascade_end")
    assert step.finished_at.timestamp() >= end["at"], "succeeded while Atlas was still cascading"
    assert end["at"] - patches[0]["at"] > 4 * 1.5, "the cascade was not slower than the lease"


@pytest.mark.django_db(transaction=True)
def test_a_code_patch_with_no_answer_is_never_sent_twice_and_the_step_pauses_until_checked(
    simulator, monkeypatch
):
    from releases.engine import code

    monkeypatch.setattr(code, "STORE_GRACE_SECONDS", 1.0)
    dev = simulator.of("DEV")
    step, user, _ = step_8_with_every_site_on_the_item(dev)
    dev.set_faults(
        fail_next=1, fail_status=504, fail_methods=("PATCH",)
    )  # a gateway gave up: did Atlas get the PATCH?

    assert run_inline(step, user) == StepState.PAUSED
    step.refresh_from_db()
    assert "unknown outcome" in step.message and "not sent again" in step.message
    assert [e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T] == []
    assert release_item(dev)["commit_hash"] != T

    services.resume(step.plan, user)  # the operator checked the item in Atlas
    assert run_engine(step) == StepState.SUCCEEDED
    patches = [e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T]
    assert len(patches) == 1
    assert set(Counter(e["id"] for e in dev.events.of_kind("cascade")).values()) == {1}


@pytest.mark.django_db(transaction=True)
def test_a_step_thread_stuck_past_the_longest_atlas_call_lets_its_lease_lapse(prod_sim, settings):
    from releases.engine.context import StepContext

    settings.STEP_LEASE_SECONDS = 1.0
    step, user = step_14(prod_sim)
    with tasks_not_sent():
        services.launch(step, user)
    assert step.claim("stuck-worker")
    client = step.environment.client()
    client.code_write_timeout = (0.5, 1.0)  # the longest call this client can be blocked in
    ctx = StepContext(step, "stuck-worker", client)
    ctx.start()
    try:
        assert ctx.stall_limit() == pytest.approx(3.5)
        ctx.doing("reading batch 1")  # then nothing: the step's own thread is stuck
        wait_for(lambda: ctx.lost, timeout=10, what="the heartbeat to give the lease up")
        time.sleep(1.5)
        step.refresh_from_db()
        assert step.lease_expires_at < timezone.now(), "the heartbeat went on renewing a stuck step"
        assert "no live worker since" in step.liveness()
        with pytest.raises(LeaseLost):
            ctx.beat()
    finally:
        ctx.close()


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_lost_the_lease_sends_and_records_nothing_more():
    prod = start_prod(400)
    try:
        configure_environments({"PROD": prod}, parallelism=2)
        user = make_user()
        step = prepare_prod(services.create_plan("2.8.5", commit=R, user=user), user)
        prod.set_faults(write_latency_ms=40)
        with tasks_not_sent():
            services.launch(step, user)
        ended = []
        runner = threading.Thread(target=lambda: ended.append(run_engine(step)))
        runner.start()
        wait_for(lambda: site_counts(step)[SiteState.SUCCEEDED] >= 20, what="20 updated sites")

        # Another worker takes the step over (as after a lapsed lease).
        StepRun.objects.filter(pk=step.pk).update(
            lease_owner="another-worker", lease_expires_at=timezone.now() + timedelta(hours=1)
        )
        sent_at_takeover = len(client_updates(prod))
        recorded = Counter(SiteResult.objects.filter(step=step).values_list("state", flat=True))
        runner.join(timeout=30)

        assert ended == [None], "the worker that lost the lease must not finish the step"
        # Found out at the next lease renewal or lease-checked dispatch, whichever comes first:
        # at most the write window (2 × parallelism + 8) in flight and one dispatched window follow.
        assert len(client_updates(prod)) - sent_at_takeover <= 2 * (2 * 2 + 8)
        assert Counter(SiteResult.objects.filter(step=step).values_list("state", flat=True)) == recorded
        step.refresh_from_db()
        assert (step.state, step.lease_owner) == (StepState.RUNNING, "another-worker")
    finally:
        prod.stop()


# -- 3. a step never hangs silently ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_unexpected_error_fails_the_step_with_the_error_and_an_audit_event(prod_sim):
    step, user = step_14(prod_sim)

    with patch("releases.engine.snapshot.exclude_profile", autospec=True, side_effect=RuntimeError("a bug")):
        assert run_inline(step, user) == StepState.FAILED

    step.refresh_from_db()
    assert step.message == "the step stopped on an unexpected error: RuntimeError: a bug"
    assert step.lease_owner == ""
    assert AuditEvent.objects.filter(action="step_failed", step=step, message=step.message).exists()
    assert client_updates(prod_sim) == []


@pytest.mark.django_db(transaction=True)
def test_a_selector_saved_behind_the_admins_validation_after_launch_fails_the_step_naming_the_group(prod_sim):
    step, user = step_14(prod_sim)
    with tasks_not_sent():
        services.launch(step, user)
    # Changed while the step waited in the queue (launch itself refuses such a selector).
    UpdateGroup.objects.filter(environment__name="PROD", step_number=14).update(where={"$where": "1"})

    assert run_engine(step) == StepState.FAILED

    step.refresh_from_db()
    assert "$where" in step.message and "PROD update group" in step.message, step.message
    assert AuditEvent.objects.filter(action="step_failed", step=step, message=step.message).exists()
    assert client_updates(prod_sim) == []


@pytest.fixture
def prod_sim():
    server = start_prod(400)
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_abort_of_a_step_whose_worker_is_gone_ends_it_at_once():
    configure_environments({})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    with tasks_not_sent():
        step = services.launch(services.get_step(plan, 2), user).step
    StepRun.objects.filter(pk=step.pk).update(
        lease_owner="dead-worker", lease_expires_at=timezone.now() - timedelta(seconds=5)
    )
    assert "no live worker since" in reports.step_status(StepRun.objects.get(pk=step.pk))["liveness"]

    services.abort(plan, user)

    step.refresh_from_db()
    assert step.state == StepState.ABORTED and "no live worker" in step.message
    assert step.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_an_abort_that_races_a_threshold_pause_is_not_lost():
    configure_environments({})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    with tasks_not_sent():
        step = services.launch(services.get_step(plan, 2), user).step
    assert step.claim("worker-1")
    services.abort(plan, user)  # asked while the worker is already stopping on a threshold

    assert step.finish("worker-1", StepState.PAUSED, "failure threshold (3 sites) reached: 3 of 9")

    step.refresh_from_db()
    assert step.state == StepState.ABORTED and "failure threshold" in step.message


# -- 3b. failures that are not about one site ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_wrong_password_stops_a_site_step_after_one_request(prod_sim, monkeypatch):
    step, user = step_14(prod_sim)
    monkeypatch.setenv("ATLAS_PROD_PASSWORD", "changed-in-ldap-Zq7")  # the account's password moved

    assert run_inline(step, user) == StepState.FAILED

    step.refresh_from_db()
    assert step.message.startswith("Atlas PROD refused the credentials (username 'release-portal'")
    assert "password variable ATLAS_PROD_PASSWORD" in step.message
    assert "changed-in-ldap-Zq7" not in step.message + str(step.result)
    assert len(prod_sim.events.of_kind("auth_failed")) == 1, "one LDAP bind, not one per site"
    assert client_updates(prod_sim) == []
    counts = site_counts(step)
    assert counts[SiteState.FAILED] == 0 and counts[SiteState.PENDING] == sum(counts.values()) > 300


def site_writes(log: list[list]) -> list[list]:
    """The site PATCHes/DELETEs in the simulator's request log, in order of arrival."""
    return sorted(
        (e for e in log if e[0] in ("PATCH", "DELETE") and e[1].startswith("/sites/")), key=lambda e: e[2]
    )


def few_targets(number: int, where: dict) -> None:
    """Step `number` on PROD runs one batch, of the sites `where` selects."""
    groups = UpdateGroup.objects.filter(environment__name="PROD", step_number=number).order_by("position")
    first = groups.first()
    groups.exclude(pk=first.pk).update(enabled=False)
    UpdateGroup.objects.filter(pk=first.pk).update(where=where)


LEGACY = {"status": "launched", "update_group": {"$in": [7, 8, 9, 10, 11, 12]}}  # 12 PROD sites


@pytest.mark.django_db(transaction=True)
def test_an_update_steps_first_patch_goes_alone_and_the_others_follow_once_atlas_accepted_it(prod_sim):
    step, user = step_14(prod_sim, parallelism=4)
    few_targets(14, LEGACY)
    prod_sim.set_faults(write_latency_ms=300)
    prod_sim.injector.record = True

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    log = list(prod_sim.injector.requests)
    assert [e for e in log if e[1].startswith("/code/")] == [], "no separate probe: the first PATCH is it"
    writes = site_writes(log)
    assert len(writes) == 12 and sorted(client_updates(prod_sim)) == sorted(
        e[1].rsplit("/", 1)[1] for e in writes
    )
    first, rest = writes[0], writes[1:]
    assert all(e[2] >= first[3] for e in rest), "a second write went out before Atlas accepted the first"
    # Then the window opens: the other writes overlap one another (at most 4 at once).
    assert any(b[2] < a[3] for a, b in itertools.pairwise(rest)), "the writes after the first went one by one"
    assert prod_sim.max_writes_in_flight == 4


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("meanwhile", ["moved onto the release profile", "deleted"])
def test_a_first_patch_that_only_the_proxy_answered_proves_nothing_however_its_reread_ends(
    prod_sim, monkeypatch, meanwhile
):
    """The proxy answers the first PATCH 503 (Atlas never saw the credentials) and the site changes
    meanwhile, so the client's public re-read ends that site "done" or "gone": still no proof, so
    the next PATCH goes alone too, and the wrong password still costs Atlas one refused login."""
    step, user = step_14(prod_sim, parallelism=8)
    few_targets(14, LEGACY)
    profile = release_item(prod_sim)["_id"]
    answered_by_the_proxy: list[str] = []
    handle = prod_sim.injector._handle

    def proxy_first(environ, start_response):
        if environ["REQUEST_METHOD"] == "PATCH" and not answered_by_the_proxy:
            answered_by_the_proxy.append(site_id := environ["PATH_INFO"].rsplit("/", 1)[1])
            change = {"code.profile": profile} if meanwhile.startswith("moved") else {"_deleted": True}
            with prod_sim.lock:
                prod_sim.db["sites"].update_one({"_id": ObjectId(site_id)}, {"$set": change})
            return prod_sim.injector._unavailable(503)
        return handle(environ, start_response)

    monkeypatch.setattr(prod_sim.injector, "_handle", proxy_first)
    monkeypatch.setenv("ATLAS_PROD_PASSWORD", "changed-in-ldap-Zq7")
    prod_sim.injector.record = True

    assert run_inline(step, user) == StepState.FAILED

    step.refresh_from_db()
    assert step.message.startswith("Atlas PROD refused the credentials"), step.message
    assert len(prod_sim.events.of_kind("auth_failed")) == 1, "one LDAP bind, not one per site"
    writes = site_writes(prod_sim.injector.requests)
    assert [e[4] for e in writes] == [503, 401] and writes[1][2] >= writes[0][3]


@pytest.mark.django_db(transaction=True)
def test_a_password_changed_mid_step_costs_no_more_refusals_than_writes_already_out(prod_sim, monkeypatch):
    """Once Atlas refused one write, no thread sends another (queued ones included): at most the
    writes already on their way are refused with it."""
    step, user = step_14(prod_sim, parallelism=4)
    site_patches: list[str] = []
    handle = prod_sim.injector._handle

    def password_moves_at_the_40th(environ, start_response):
        if environ["REQUEST_METHOD"] == "PATCH" and environ["PATH_INFO"].startswith("/sites/"):
            site_patches.append(environ["PATH_INFO"])
            if len(site_patches) == 40:
                prod_sim.state.users["release-portal"] = "moved-in-ldap"
        return handle(environ, start_response)

    monkeypatch.setattr(prod_sim.injector, "_handle", password_moves_at_the_40th)
    prod_sim.set_faults(write_latency_ms=50)
    prod_sim.injector.record = True

    assert run_inline(step, user) == StepState.FAILED

    step.refresh_from_db()
    assert step.message.startswith("Atlas PROD refused the credentials"), step.message
    refused = [e for e in site_writes(prod_sim.injector.requests) if e[4] == 401]
    assert 1 <= len(refused) <= 4 and len(prod_sim.events.of_kind("auth_failed")) == len(refused)
    assert site_counts(step)[SiteState.SUCCEEDED] >= 40 - 4  # the 40th and the three before it may be refused


@pytest.mark.django_db(transaction=True)
def test_a_pause_while_the_first_write_is_out_sends_nothing_more_and_records_its_answer(prod_sim):
    step, user = step_14(prod_sim)
    prod_sim.set_faults(write_latency_ms=3000)  # the first PATCH answers 3 s late
    prod_sim.injector.record = True
    with tasks_not_sent():
        services.launch(step, user)
    ended: list = []
    runner = threading.Thread(target=lambda: ended.append(run_engine(step)))
    runner.start()
    wait_for(lambda: prod_sim.injector.writes_in_flight == 1, what="the first write out")
    services.pause(step.plan, user)
    runner.join(timeout=60)

    assert ended == [StepState.PAUSED]
    (write,) = site_writes(prod_sim.injector.requests)
    assert write[4] == 200 and client_updates(prod_sim) == [write[1].rsplit("/", 1)[1]]
    counts = site_counts(step)
    assert counts[SiteState.SUCCEEDED] == 1 and counts[SiteState.DISPATCHED] == 0
    assert counts[SiteState.PENDING] == sum(counts.values()) - 1 > 300


@pytest.mark.django_db(transaction=True)
def test_a_delete_step_sends_no_delete_before_the_credentials_probe_answered_though_reads_overlap_it(
    prod_sim,
):
    configure_environments({"PROD": prod_sim}, pool_wait_seconds=0)  # no wait for the pool's refill
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 13)
    few_targets(13, {"status": "available", "update_group": 0})
    prod_sim.set_faults(write_latency_ms=600)  # the probe (a PATCH) answers 0.6 s late
    prod_sim.injector.record = True

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    log = list(prod_sim.injector.requests)
    probe = probe_of(log)
    deletes = site_writes(log)
    assert deletes and {e[0] for e in deletes} == {"DELETE"} and len(removals(prod_sim)) == len(deletes)
    assert deletes[0][2] >= probe[3], "a site was deleted before the credentials probe answered"
    # The snapshot was read while the probe waited: its answer is the only thing deletes wait for.
    assert any(e[0] == "GET" and e[1] == "/sites" and e[3] <= probe[3] for e in log)


@pytest.mark.django_db(transaction=True)
def test_a_pause_while_a_delete_steps_probe_is_out_dispatches_and_sends_nothing(prod_sim):
    configure_environments({"PROD": prod_sim})
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 13)
    prod_sim.set_faults(write_latency_ms=4000)  # the probe (a PATCH) answers 4 s late
    prod_sim.injector.record = True
    with tasks_not_sent():
        services.launch(step, user)
    ended: list = []
    runner = threading.Thread(target=lambda: ended.append((run_engine(step), time.time())))
    runner.start()
    wait_for(lambda: prod_sim.injector.writes_in_flight == 1, what="the probe out")
    time.sleep(0.5)  # the pool's snapshot is read and stored meanwhile
    services.pause(step.plan, user)
    runner.join(timeout=60)

    assert [state for state, _ in ended] == [StepState.PAUSED]
    wait_for(lambda: prod_sim.injector.writes_in_flight == 0, what="the probe's answer")
    log = list(prod_sim.injector.requests)
    probe = probe_of(log)
    assert ended[0][1] < probe[3], "the pause waited for the probe"
    assert site_writes(log) == [] and removals(prod_sim) == []
    counts = site_counts(step)
    assert counts[SiteState.DISPATCHED] == 0 and counts[SiteState.PENDING] == sum(counts.values()) > 5


@pytest.mark.django_db(transaction=True)
def test_a_site_step_that_ends_before_reading_sends_no_credentials_probe(prod_sim):
    step, user = step_14(prod_sim)
    UpdateGroup.objects.filter(environment__name="PROD", step_number=14).update(enabled=False)
    prod_sim.injector.record = True

    assert run_inline(step, user) == StepState.FAILED

    step.refresh_from_db()
    assert step.message.startswith("no enabled update group for step 14")
    assert [e for e in prod_sim.injector.requests if e[0] != "GET"] == []


@pytest.mark.django_db(transaction=True)
def test_atlas_not_answering_pauses_the_step_saying_since_when_then_resume_completes(prod_sim):
    configure_environments({"PROD": prod_sim}, parallelism=2, max_attempts=2)
    user = make_user()
    step = prepare_prod(services.create_plan("2.8.5", commit=R, user=user), user)
    prod_sim.set_faults(write_latency_ms=20)
    with tasks_not_sent():
        services.launch(step, user)
    ended = []
    runner = threading.Thread(target=lambda: ended.append(run_engine(step)))
    runner.start()
    wait_for(lambda: site_counts(step)[SiteState.SUCCEEDED] >= 20, what="20 updated sites")
    prod_sim.set_faults(fail_rate=1.0)  # Atlas goes away
    runner.join(timeout=60)

    step.refresh_from_db()
    assert ended == [StepState.PAUSED]
    assert step.message.startswith("Atlas PROD unreachable since "), step.message
    assert site_counts(step)[SiteState.FAILED] == 0, "an outage is not a site failure"

    prod_sim.set_faults()  # Atlas is back
    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step) == StepState.SUCCEEDED
    assert set(Counter(client_updates(prod_sim)).values()) == {1}, "a site was PATCHed twice"
    assert site_counts(step)[SiteState.SUCCEEDED] == sum(site_counts(step).values())


@pytest.mark.django_db(transaction=True)
def test_a_launch_the_broker_does_not_take_is_rolled_back_and_audited(monkeypatch):
    configure_environments({})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = services.get_step(plan, 2)
    # A broker that refuses the connection cannot be produced reliably on every broker here.
    with tasks_not_sent() as send:
        send.side_effect = BrokerError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")
        with pytest.raises(services.ActionRefused, match="broker unreachable.*nothing was launched"):
            services.launch(step, user)

    step.refresh_from_db()
    assert (step.state, step.task_ids) == (StepState.PENDING, [])
    launches = AuditEvent.objects.filter(action="launch", step=step)
    assert list(launches.values_list("outcome", flat=True)) == ["refused"]
    assert "broker unreachable" in launches.get().message


@pytest.mark.slow
@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminating backends needs PostgreSQL")
def test_a_worker_and_release_wait_whose_database_connections_are_terminated_carry_on(prod_sim, start_worker):
    configure_environments({"PROD": prod_sim}, parallelism=2)
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = prepare_prod(plan, user)
    prod_sim.set_faults(write_latency_ms=30)
    worker = start_worker("pg")
    env = {**os.environ, "DATABASE_URL": _database_url()}
    waiting = subprocess.Popen(
        [sys.executable, "manage.py", "release", "launch", "2.8.5", "--step", "14", "--user", user.username,
         "--yes", "--wait"],
        cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    for done in (30, 120):
        wait_for(lambda d=done: site_counts(step)[SiteState.SUCCEEDED] >= d, what=f"{done} updated sites")
        # The worker's and `release --wait`'s connections: not those of this test process (its
        # other threads', kept past earlier tests, which a later test of this process would meet
        # dead).
        ours = [c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.raddr]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND NOT (client_port = ANY(%s))",
                [ours],
            )
            assert cursor.rowcount >= 1, "no connection of the worker or the waiter was ended"
    output, _ = waiting.communicate(timeout=120)

    assert waiting.returncode == 0, output[-3000:]
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED, step.message
    assert set(Counter(client_updates(prod_sim)).values()) == {1}
    assert "reconnecting" in worker.output()
    assert "lease lost" not in worker.output(), "the step stalled until another claim took it over"


# -- 4. what the operator confirmed is what runs ------------------------------------------------


def _confirmed_from_preview(step: StepRun, delta: int) -> dict:
    (preview,) = reports.preview(step.plan, step.number)
    counts = reports.confirmed_counts([preview])[step.number]
    first = next(name for name, n in counts.items() if n > abs(delta))
    return {step.number: {**counts, first: counts[first] + delta}}, first


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_grew_since_the_confirmation_pauses_before_any_write(prod_sim):
    step, user = step_14(prod_sim)
    confirmed, grown = _confirmed_from_preview(step, -3)  # the operator saw 3 fewer sites

    with tasks_not_sent():
        services.launch(step, user, confirmed=confirmed)
    assert run_engine(step) == StepState.PAUSED

    step.refresh_from_db()
    assert "more sites than confirmed" in step.message and grown in step.message
    assert client_updates(prod_sim) == []
    launch = AuditEvent.objects.get(action="launch", step=step)
    assert launch.parameters["confirmed"][str(step.number)] == confirmed[step.number]
    # The launch page now shows the frozen targets, not a fresh read of the selectors.
    preview = reports.preview_step(step)
    assert preview["frozen"] and preview["total"] == sum(site_counts(step).values())
    # Resuming accepts the grown batch.
    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step) == StepState.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_shrank_runs_and_says_so(prod_sim):
    step, user = step_14(prod_sim)
    confirmed, shrunk = _confirmed_from_preview(step, +2)

    with tasks_not_sent():
        services.launch(step, user, confirmed=confirmed)
    assert run_engine(step) == StepState.SUCCEEDED

    step.refresh_from_db()
    assert "fewer sites than confirmed" in step.message and shrunk in step.message


@pytest.mark.django_db(transaction=True)
def test_the_pause_between_batches_holds_after_a_resume(prod_sim):
    step, user = step_14(prod_sim, batch_pause_seconds=3)
    groups = UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position")
    groups.exclude(pk__in=[g.pk for g in groups[:3]]).update(enabled=False)  # three batches, two pauses
    with tasks_not_sent():
        services.launch(step, user)
    runner = threading.Thread(target=run_engine, args=(step,))
    runner.start()
    wait_for(
        lambda: StepRun.objects.filter(pk=step.pk, activity__startswith="pausing").exists(),
        what="the pause after batch 1",
    )
    services.pause(step.plan, user)
    runner.join(timeout=30)
    step.refresh_from_db()
    assert step.state == StepState.PAUSED
    first_done = step.result["batch_finished_at"]["0"]
    sent_before = len(client_updates(prod_sim))

    with tasks_not_sent():
        services.resume(step.plan, user)  # at once: the pause must still hold
    assert run_engine(step) == StepState.SUCCEEDED

    second_batch = [e for e in prod_sim.events.of_kind("site_update") if e["source"] == "client"][
        sent_before:
    ]
    assert second_batch[0]["at"] >= first_done + 3


@pytest.mark.django_db(transaction=True)
def test_finalize_is_refused_once_step_8_has_run_and_a_refinalize_before_is_audited(simulator):
    dev = simulator.of("DEV")
    configure_environments({"DEV": dev})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step8 = reach(plan, user, 8)
    other = "c" * 40
    services.finalize(plan, tag="2.8.5-rc", commit=other, user=user)  # corrected before step 8

    refinalize = AuditEvent.objects.filter(action="finalize", outcome="ok").order_by("-id").first()
    assert refinalize.parameters["previous"] == {"tag": plan.version, "commit": T}
    assert refinalize.parameters["commit"] == other

    assert run_inline(step8, user) == StepState.SUCCEEDED
    with pytest.raises(services.ActionRefused, match=r"step 8 \(succeeded\) has already run"):
        services.finalize(plan, tag="2.8.5", commit=T, user=user)
    plan.refresh_from_db()
    assert plan.final_commit == other
    assert code_items(dev, commit_hash=other)


# -- 7. the import graph -------------------------------------------------------------------------


def _imported_modules(name: str, path: Path) -> set[str]:
    """Every module (and `module.name`) the file imports, lazy imports inside functions too."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_engine_never_imports_services_and_the_release_modules_have_no_import_cycle():
    root = Path(__file__).resolve().parent.parent / "releases"
    modules = {}
    for path in root.rglob("*.py"):
        if "migrations" in path.parts or "management" in path.parts:
            continue
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {
        name: {m for m in _imported_modules(name, path) if m in modules and m != name}
        for name, path in modules.items()
    }
    assert "releases.engine" in graph["releases.tasks"]  # the walk sees what it should
    engine = [n for n in modules if n.startswith("releases.engine")]
    for name in engine:
        assert not graph[name] & {"releases.services", "releases.notify", "releases.tasks"}, name

    def cycle_from(start, node, seen):
        for nxt in graph[node]:
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                found = cycle_from(start, nxt, seen)
                if found:
                    return [node, *found]
        return None

    for name in modules:
        assert cycle_from(name, name, set()) is None, f"import cycle: {cycle_from(name, name, set())}"
