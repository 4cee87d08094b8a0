"""Safe to trust with PROD, second pass: the races a skeptical review found, each judged from Atlas's
side (the simulator's event log) wherever it concerns Atlas.

- A DELETE that reached Atlas leaves no way out but "deleted" or "check this site": a later
  refusal, an outage, an abort or a stop never turns it into "not deleted".
- A commit stored by a PATCH whose answer was never seen never makes step 8 succeed on its own.
- A pause or abort while a takeover waits for an earlier PATCH sends nothing.
- A step that cannot even start fails; a lease that is no longer surely ours stops the writes.
"""

from __future__ import annotations

import threading
import time
from io import StringIO

import pytest
from bson import ObjectId
from django.core.management import call_command

from atlas.client import AtlasClient
from atlas.errors import AuthenticationError, Unavailable
from atlas.simulator import SimulatorServer
from releases import reports, services
from releases.engine.context import StepContext
from releases.models import Environment, SiteResult, StepRun
from releases.states import SiteState, StepState
from tests.support import R, T, configure_environments, make_user, run_engine, tasks_not_sent
from tests.test_engine_faults import prepare_prod, run_inline, wait_for
from tests.test_engine_safety import (
    give_up_code_patch_answers_after_one_second,
    reach,
    removals,
    step_8_with_every_site_on_the_item,
)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def site_status(sim, site_id: str) -> str:
    with sim.lock:
        return sim.db["sites"].find_one({"_id": ObjectId(site_id)})["status"]


# -- deletions --------------------------------------------------------------------------------------


def delete_step_frozen_and_paused(simulator) -> tuple[SimulatorServer, StepRun, object, dict]:
    """DEV step 3 launched with every batch confirmed empty: it freezes its targets and pauses
    before any write. Returns the simulator, the step, the operator and the real batch sizes."""
    sim = simulator.of("DEV")
    configure_environments({"DEV": sim}, parallelism=1)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 3)
    (preview,) = reports.preview(step.plan, 3)
    counts = reports.confirmed_counts([preview])[3]
    with tasks_not_sent():
        services.launch(step, user, confirmed={3: {name: 0 for name in counts}})
    assert run_engine(step) == StepState.PAUSED
    return sim, step, user, counts


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("second", ["refused", "401"])
def test_a_delete_that_reached_atlas_then_failed_again_is_flagged_never_called_not_deleted(
    simulator, monkeypatch, second
):
    sim = simulator.of("DEV")
    configure_environments({"DEV": sim}, parallelism=1)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 3)
    real_send = AtlasClient._send
    seen: dict = {"deletes": 0, "site": None}

    def send(self, method, path, **kwargs):
        # Atlas's side of a race, played on the real simulator at the moment each DELETE leaves.
        if method == "DELETE":
            seen["deletes"] += 1
            site = path.rsplit("/", 1)[-1]
            if seen["deletes"] == 1:
                seen["site"] = site
                sim.touch_site(site)  # an Atlas task wrote it: our DELETE is answered 412
            elif seen["deletes"] == 2:
                sim.state.take_pool_site(site)  # an install takes it; our next DELETE fails
                if second == "refused":
                    raise Unavailable("DELETE could not connect", environment="DEV", url=path)
                raise AuthenticationError("authentication failed", environment="DEV", url=path, status=401)
        return real_send(self, method, path, **kwargs)

    monkeypatch.setattr(AtlasClient, "_send", send)
    run_inline(step, user)

    site = seen["site"]
    assert [e["status"] for e in removals(sim) if e["id"] == site] == ["available"]  # the 412'd DELETE
    assert site_status(sim, site) == "installed"  # a live site now, with its instance removed
    row = SiteResult.objects.get(step=step, site_id=site)
    assert (row.state, row.needs_check) == (SiteState.FAILED, True), row.message
    assert "possibly destroyed" in row.message and "not deleted" not in row.message
    step.refresh_from_db()
    assert row.path in step.message


@pytest.mark.django_db(transaction=True)
def test_a_destroyed_site_is_named_when_atlas_then_goes_away_and_flagged_after_an_abort(
    simulator, monkeypatch
):
    sim = simulator.of("DEV")
    configure_environments({"DEV": sim}, parallelism=2, max_attempts=2)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, 3)
    sim.set_faults(take_before_delete_rate=1.0)
    record = sim.events.record

    def outage_after_the_first_removal(kind, id, **details):
        event = record(kind, id, **details)
        if kind == "site_remove":
            sim.set_faults(fail_rate=1.0)  # Atlas goes away right after (before its answer)
        return event

    monkeypatch.setattr(sim.events, "record", outage_after_the_first_removal)
    assert run_inline(step, user) == StepState.PAUSED
    monkeypatch.undo()
    sim.set_faults()

    step.refresh_from_db()
    destroyed = {e["id"] for e in removals(sim) if e["status"] != "available"}
    assert destroyed
    flagged = {r.site_id: r.path for r in SiteResult.objects.filter(step=step, needs_check=True)}
    assert destroyed <= flagged.keys()
    assert all(flagged[site] in step.message for site in destroyed), step.message

    services.abort(step.plan, user)
    step.refresh_from_db()
    assert step.state == StepState.ABORTED
    assert not SiteResult.objects.filter(step=step, state=SiteState.DISPATCHED).exists()
    flagged_after = set(
        SiteResult.objects.filter(step=step, needs_check=True).values_list("site_id", flat=True)
    )
    assert destroyed <= flagged_after


@pytest.mark.django_db(transaction=True)
def test_a_dispatched_delete_found_out_of_the_pool_on_resume_is_flagged(simulator):
    sim, step, user, counts = delete_step_frozen_and_paused(simulator)
    assert removals(sim) == []
    # As after a worker that died with this site's DELETE on the wire: dispatched, no answer.
    row = SiteResult.objects.filter(step=step).first()
    SiteResult.objects.filter(pk=row.pk).update(state=SiteState.DISPATCHED)
    sim.state.take_pool_site(row.site_id)

    services.resume(step.plan, user)
    run_engine(step)

    row.refresh_from_db()
    assert (row.state, row.needs_check) == (SiteState.FAILED, True)
    assert "possibly destroyed" in row.message
    out = StringIO()
    call_command("release", "status", "2.8.5", stdout=out)  # what the operator reads
    assert "CHECK IN ATLAS: 1 site(s)" in out.getvalue() and row.site_id in out.getvalue()
    (listed,) = [s for s in reports.status(step.plan)["steps"] if s["number"] == 3]
    assert [site["site_id"] for site in listed["to_check"]] == [row.site_id]
    assert row.site_id not in {e["id"] for e in removals(sim)}  # and nothing more was sent for it


# -- code steps ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_commit_stored_by_an_unanswered_patch_pauses_for_the_operator_while_other_writes_touch_the_sites(
    simulator, monkeypatch
):
    dev = simulator.of("DEV")
    step, user, ids = step_8_with_every_site_on_the_item(dev)
    plan = step.plan
    real_clients = give_up_code_patch_answers_after_one_second(monkeypatch)
    dev.set_faults(cascade_delay_ms=150)

    def atlas_tasks() -> None:  # Atlas's own writes to every site once the item is stored
        wait_for(lambda: [e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T], timeout=30)
        time.sleep(1.2)
        for oid in ids:
            dev.touch_site(oid)

    thread = threading.Thread(target=atlas_tasks)
    thread.start()
    state = run_inline(step, user)
    thread.join()

    assert state == StepState.PAUSED
    step.refresh_from_db()
    assert "never received" in step.message and "Confirm in Atlas" in step.message
    wait_for(lambda: dev.events.of_kind("cascade_end"), timeout=60, what="the cascade's end")
    real_clients()

    services.resume(plan, user)  # the operator confirmed the code update in Atlas
    assert run_engine(step) == StepState.SUCCEEDED
    assert len([e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T]) == 1
    cascaded = [e["id"] for e in dev.events.of_kind("cascade")]
    assert sorted(cascaded) == sorted(str(i) for i in ids), "the cascade ran other than once per site"


@pytest.mark.django_db(transaction=True)
def test_an_abort_while_a_takeover_waits_for_an_earlier_patch_sends_nothing(simulator, monkeypatch):
    from releases.engine import code

    monkeypatch.setattr(code, "STORE_GRACE_SECONDS", 6.0)
    dev = simulator.of("DEV")
    configure_environments({"DEV": dev})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = reach(plan, user, 8)
    with tasks_not_sent():
        services.launch(step, user)
    StepRun.objects.filter(pk=step.pk).update(result={"commit_patch": "sent"})  # a run that died
    ended: list = []
    thread = threading.Thread(target=lambda: ended.append(run_engine(step)))
    thread.start()
    wait_for(
        lambda: StepRun.objects.filter(pk=step.pk, activity__startswith="waiting for a PATCH").exists(),
        what="the takeover's wait",
    )
    services.abort(plan, user)
    thread.join(30)

    assert ended == [StepState.ABORTED]
    assert [e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T] == []
    assert dev.events.of_kind("cascade") == []


# -- starting and holding a step -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_step_whose_environment_cannot_make_a_client_fails_instead_of_staying_running():
    configure_environments({})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = services.get_step(plan, 2)
    with tasks_not_sent():
        services.launch(step, user)
    Environment.objects.filter(name="DEV").update(api_url="atlas-dev.example.com/atlas")  # no scheme

    assert run_engine(step) == StepState.FAILED
    step.refresh_from_db()
    assert "could not start" in step.message and step.lease_owner == ""


@pytest.mark.django_db(transaction=True)
def test_a_renewal_blocked_past_the_lease_stops_the_writes_before_another_worker_can_claim(
    settings, monkeypatch
):
    settings.STEP_LEASE_SECONDS = 2.0
    configure_environments({})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = services.get_step(plan, 2)
    with tasks_not_sent():
        services.launch(step, user)
    assert step.claim("A")
    ctx = StepContext(step, "A")
    ctx.start()
    real = StepRun.heartbeat

    def blocked(self, owner, activity=None):  # the renewal's database call hangs (locks, reconnects)
        time.sleep(6)
        return real(self, owner, activity)

    monkeypatch.setattr(StepRun, "heartbeat", blocked)
    try:
        wait_for(lambda: StepRun.objects.get(pk=step.pk).claim("B"), timeout=10, what="the lease to lapse")
        assert not ctx.client.proceed(), "two owners may send writes"
        assert ctx.lost
    finally:
        ctx._stop.set()


# -- the second review ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_cut_short_by_a_late_renewal_is_never_saved_as_the_whole_snapshot(simulator, monkeypatch):
    from releases.engine import snapshot as snap

    prod = simulator.of("PROD", sites=300)
    configure_environments({"PROD": prod})
    user = make_user()
    step = prepare_prod(services.create_plan("2.8.5", commit=R, user=user), user)
    (preview,) = reports.preview(step.plan, 14)
    counts = reports.confirmed_counts([preview])[14]
    first = next(iter(counts))
    confirmed = {**counts, first: max(0, counts[first] - 1)}  # batch 1 "grew": the rest is read at once
    real = snap.Snapshot._read_batch

    def read_batch(self, index, group):
        if index == 3:
            self.ctx._valid_until = 0.0  # a renewal is late now: the lease is no longer surely ours
        return real(self, index, group)

    monkeypatch.setattr(snap.Snapshot, "_read_batch", read_batch)
    with tasks_not_sent():
        services.launch(step, user, confirmed={14: confirmed})
    assert run_engine(step) is None  # the run stopped as a lost lease: nothing more recorded
    step.refresh_from_db()
    assert not step.result.get("snapshot")
    assert len(step.result.get("batches", [])) < len(counts)

    monkeypatch.setattr(snap.Snapshot, "_read_batch", real)
    StepRun.objects.filter(pk=step.pk).update(
        lease_owner="", lease_expires_at=None
    )  # as the watchdog finds it
    assert run_engine(step, owner="next") == StepState.PAUSED  # batch 1 still larger than confirmed
    step.refresh_from_db()
    assert step.result["snapshot"] and len(step.result["batches"]) == len(counts)
    services.resume(step.plan, user)
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED
    step.refresh_from_db()
    assert step.counts()["targeted"] == sum(counts.values()) == step.counts()["succeeded"]


@pytest.mark.django_db(transaction=True)
def test_skipping_a_paused_delete_step_flags_an_unanswered_delete(simulator):
    sim, step, user, counts = delete_step_frozen_and_paused(simulator)
    row = SiteResult.objects.filter(step=step).first()
    SiteResult.objects.filter(pk=row.pk).update(state=SiteState.DISPATCHED)  # a DELETE with no answer

    services.skip(step, user, "pool deletion not needed")

    row.refresh_from_db()
    assert (row.state, row.needs_check) == (SiteState.FAILED, True)
    out = StringIO()
    call_command("release", "status", "2.8.5", stdout=out)
    assert "CHECK IN ATLAS" in out.getvalue() and row.site_id in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_relaunch_after_aborting_an_unconfirmed_cascade_asks_again(simulator, monkeypatch):
    dev = simulator.of("DEV")
    step, user, _ = step_8_with_every_site_on_the_item(dev)
    plan = step.plan
    real_clients = give_up_code_patch_answers_after_one_second(monkeypatch)
    dev.set_faults(cascade_delay_ms=100)  # the cascade outlasts the 1 s wait for the answer
    assert run_inline(step, user) == StepState.PAUSED  # awaiting the operator's confirmation
    services.abort(plan, user)  # unsure, the operator aborts; later relaunches

    assert run_inline(step, user, owner="relaunch") == StepState.PAUSED
    step.refresh_from_db()
    assert "Confirm in Atlas" in step.message
    assert len([e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T]) == 1
    wait_for(lambda: dev.events.of_kind("cascade_end"), timeout=90, what="the cascade's end")
    services.resume(plan, user)  # the confirmation
    real_clients()
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED
    assert len([e for e in dev.events.of_kind("code_update") if e["commit_hash"] == T]) == 1
