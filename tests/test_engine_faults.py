"""The release engine when things go wrong: Atlas faults, a worker killed mid-batch, bad input,
an unreachable Atlas and wrong credentials.

Most scenarios run the engine in-process (`engine.execute` called directly, nothing enqueued);
the killed-worker scenario runs two real worker processes.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import Counter

import pytest

from atlas.simulator import SimulatorServer
from releases import services
from releases.models import AuditEvent, Environment, SiteResult, StepRun
from releases.states import SiteState, StepState
from tests.support import (
    T,
    code_items,
    configure_environments,
    make_user,
    run_engine,
    sites,
    tasks_not_sent,
    wait_until_idle,
)

# -- shared helpers (test_engine_controls imports them) ------------------------------------------

PROD_SITES = 400


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def start_prod(size: int = PROD_SITES) -> SimulatorServer:
    """A simulated PROD Atlas of `size` sites (400: about 356 targeted by step 14)."""
    return SimulatorServer(
        "prod", sites=size, password=os.environ["ATLAS_PROD_PASSWORD"], pool_refill_delay=0.2
    )


@pytest.fixture
def prod_sim():
    server = start_prod()
    yield server
    server.stop()


def client_updates(sim: SimulatorServer, since: int = 0) -> list[str]:
    """Site ids the portal itself PATCHed onto a profile (not code-item cascades), in order."""
    return [e["id"] for e in sim.events.of_kind("site_update")[since:] if e["source"] == "client"]


def run_inline(step: StepRun, user, owner: str = "test-owner") -> str | None:
    """Launch `step` without enqueueing a task, then run the engine here, in this process."""
    with tasks_not_sent() as enqueue:
        services.launch(step, user)
    assert enqueue.call_count <= 1
    return run_engine(step, owner)


def prepare_prod(plan, user) -> StepRun:
    """Get PROD step 14 ready: steps 2–11 and 13 skipped or recorded, step 12 deployed in-process."""
    for number in (2, 3, 4, 5, 6):
        services.skip(services.get_step(plan, number), user, "not needed by this test")
    services.finalize(plan, tag=plan.version, commit=T, user=user)
    for number in (8, 9, 10, 11):
        services.skip(services.get_step(plan, number), user, "not needed by this test")
    assert run_inline(services.get_step(plan, 12), user) == StepState.SUCCEEDED
    services.skip(services.get_step(plan, 13), user, "not needed by this test")
    return services.get_step(plan, 14)


def release_item(sim: SimulatorServer, version: str = "2.8.5") -> dict:
    (item,) = code_items(sim, **{"meta.name": "express", "meta.version": version})
    return item


def wait_for(condition, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def site_counts(step: StepRun) -> Counter:
    return Counter(SiteResult.objects.filter(step=step).values_list("state", flat=True))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- Atlas faults ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_step_14_completes_with_exact_counts_under_503s_slow_answers_and_etag_races(prod_sim):
    configure_environments({"PROD": prod_sim}, max_attempts=6, read_timeout_seconds=1)
    user = make_user()
    plan = services.create_plan("2.8.5", commit="a" * 39 + "1", user=user)
    step = prepare_prod(plan, user)
    # 5% of requests answered 503, 3% answered 1.5 s late (past the 1 s read timeout, after
    # Atlas applied them), 5% of site writes preceded by another writer (stale ETag: 412).
    prod_sim.set_faults(fail_rate=0.05, slow_ms=1500, slow_rate=0.03, etag_race_rate=0.05)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message
    prod_sim.set_faults()

    step.refresh_from_db()
    targets = set(SiteResult.objects.filter(step=step).values_list("site_id", flat=True))
    counts = step.counts()
    assert counts == {
        "targeted": len(targets),
        "succeeded": len(targets),
        "failed": 0,
        "skipped": 0,
        "pending": 0,
        "unverified": 0,
        "rolled_back": 0,
    }
    assert step.result["counts"] == counts
    # The snapshot is exactly the runbook's batches: installed groups 0-2 and launched groups 0-6.
    profile = release_item(prod_sim)["_id"]
    expected = {
        str(s["_id"])
        for s in sites(prod_sim)
        if (s["status"], s.get("update_group"))
        in {("installed", g) for g in range(3)} | {("launched", g) for g in range(7)}
    }
    assert targets == expected and len(targets) > 300
    on_profile = {str(s["_id"]) for s in sites(prod_sim, **{"code.profile": profile})}
    assert targets <= on_profile
    # The faults really happened, and none made the engine PATCH a site twice.
    assert SiteResult.objects.filter(step=step, attempts__gt=1).exists()
    assert SiteResult.objects.filter(step=step, message__contains="already done").exists()
    updates = Counter(client_updates(prod_sim))
    assert set(updates) == targets
    assert [i for i, n in updates.items() if n > 1] == []


@pytest.mark.slow
def test_killed_worker_mid_batch_is_replaced_and_no_site_is_patched_twice(prod_sim, start_worker):
    configure_environments({"PROD": prod_sim}, parallelism=2)
    user = make_user()
    plan = services.create_plan("2.8.5", commit="a" * 39 + "1", user=user)
    step = prepare_prod(plan, user)
    prod_sim.set_faults(write_latency_ms=40)
    workers = [start_worker("first"), start_worker("second")]

    profile = release_item(prod_sim)["_id"]
    on_release_before = {str(s["_id"]) for s in sites(prod_sim, **{"code.profile": profile})}
    services.launch(step, user)
    wait_for(lambda: site_counts(step)[SiteState.SUCCEEDED] >= 100, what="100 updated sites")
    owner = StepRun.objects.get(pk=step.pk).lease_owner
    (victim,) = [w for w in workers if w.owns(owner)]
    (survivor,) = [w for w in workers if not w.owns(owner)]

    def frozen_with_writes_out() -> bool:
        # Stop the owner while some of its PATCHes are inside Atlas (they land, never recorded)
        # and its rows say dispatched; between two batches there are none.
        victim.freeze()
        if prod_sim.injector.writes_in_flight > 0 and site_counts(step)[SiteState.DISPATCHED] > 0:
            return True
        victim.thaw()
        return False

    wait_for(frozen_with_writes_out, what="the owner frozen with writes out")
    victim.kill()
    # Rows whose outcome the dead worker never recorded: their PATCH may or may not have landed.
    assert site_counts(step)[SiteState.DISPATCHED] > 0

    (*_, final) = wait_until_idle(plan, timeout=90)
    assert final.number == 14
    assert final.state == StepState.SUCCEEDED, f"{final.message}\n{survivor.output()[-3000:]}"
    finished = AuditEvent.objects.get(step=step, action="step_succeeded")
    assert survivor.owns(finished.parameters["owner"])

    targets = set(SiteResult.objects.filter(step=step).values_list("site_id", flat=True))
    on_release_after = {str(s["_id"]) for s in sites(prod_sim, **{"code.profile": profile})}
    assert len(targets) > 300 and targets == on_release_after - on_release_before
    # The replacement re-read the sites whose outcome was unknown instead of re-sending.
    assert SiteResult.objects.filter(step=step, message="already on the release profile").exists()
    updates = Counter(client_updates(prod_sim))
    assert set(updates) == targets
    assert [i for i, n in updates.items() if n > 1] == [], "a site got the profile PATCH twice"


# -- unreachable Atlas, wrong credentials -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_unreachable_atlas_stops_the_step_naming_environment_and_url():
    configure_environments({})
    url = f"http://127.0.0.1:{closed_port()}/atlas/"
    Environment.objects.filter(name="DEV").update(api_url=url, max_attempts=2, deploy_wait_seconds=0)
    user = make_user()
    plan = services.create_plan("2.8.5", commit="a" * 39 + "1", user=user)
    step = services.get_step(plan, 2)

    state = run_inline(step, user)

    step.refresh_from_db()
    assert state in (StepState.FAILED, StepState.PAUSED) and step.state == state
    assert "DEV" in step.message and url in step.message, step.message
    assert "could not connect" in step.message
    assert "dev-secret-Zq7" not in step.message
    assert AuditEvent.objects.filter(step=step, action=f"step_{state}", message=step.message).exists()


@pytest.mark.django_db(transaction=True)
def test_wrong_password_fails_the_step_as_authentication_without_leaking_it(monkeypatch):
    real = os.environ["ATLAS_DEV_PASSWORD"]
    dev = SimulatorServer("dev", password=real, pool_refill_delay=0)
    try:
        configure_environments({"DEV": dev})
        wrong = "wrong-Pw-4f9c1e"
        monkeypatch.setenv("ATLAS_DEV_PASSWORD", wrong)
        user = make_user()
        plan = services.create_plan("2.8.5", commit="a" * 39 + "1", user=user)
        step = services.get_step(plan, 2)

        assert run_inline(step, user) == StepState.FAILED

        step.refresh_from_db()
        assert "Atlas DEV refused the credentials" in step.message, step.message
        assert "password variable ATLAS_DEV_PASSWORD" in step.message
        assert step.result["error"]["status"] == 401
        # Nothing was created in Atlas, and Atlas saw one refused request (one LDAP bind).
        assert code_items(dev, **{"meta.version": "2.8.5"}) == []
        assert len(dev.events.of_kind("auth_failed")) == 1
    finally:
        dev.stop()
    events = list(AuditEvent.objects.values("message", "parameters", "reason"))
    assert any("refused the credentials" in e["message"] for e in events)
    for secret in (wrong, real):
        assert secret not in step.message
        assert secret not in str(step.result)
        assert not [e for e in events if secret in str(e)]


# -- bad input: refused cleanly, nothing half-applied, audited ------------------------------------


def _untouched(step: StepRun) -> None:
    step = StepRun.objects.get(pk=step.pk)
    assert step.state == StepState.PENDING
    assert (step.launched_by_id, step.started_at, step.lease_owner, step.task_ids) == (None, None, "", [])
    assert not SiteResult.objects.filter(step=step).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("username", ["nobody", "visitor", "retired"])
def test_unknown_inactive_or_non_staff_user_is_refused_and_audited(username):
    make_user("visitor", staff=False)
    retired = make_user("retired")
    retired.is_active = False
    retired.save()

    with pytest.raises(services.ActionRefused, match=re.escape(repr(username))):
        services.resolve_user(username)

    (event,) = AuditEvent.objects.filter(action="resolve_user")
    assert (event.username, event.outcome) == (username, AuditEvent.Outcome.REFUSED)


@pytest.mark.django_db(transaction=True)
def test_launch_without_permission_is_refused_and_audited():
    configure_environments({})
    owner = make_user()
    plan = services.create_plan("2.8.5", commit="a" * 39 + "1", user=owner)
    reader = make_user("auditor", permissions=())
    step = services.get_step(plan, 2)

    with tasks_not_sent() as enqueue:
        with pytest.raises(
            services.ActionRefused, match="auditor may not launch steps: ask a release manager"
        ):
            services.launch(step, reader)

    enqueue.assert_not_called()
    _untouched(step)
    (event,) = AuditEvent.objects.filter(action="launch")
    assert (event.username, event.outcome, event.step_id) == ("auditor", "refused", step.pk)


@pytest.mark.django_db(transaction=True)
def test_protected_environment_needs_the_protected_permission():
    configure_environments({})
    owner = make_user()
    plan = services.create_plan("2.8.5", commit="a" * 39 + "1", user=owner)
    manager = make_user("dev-manager", permissions=("launch_step",))
    step = services.get_step(plan, 12)

    with pytest.raises(services.ActionRefused, match="ask a PROD release manager"):
        services.launch(step, manager)

    _untouched(step)
    assert AuditEvent.objects.filter(action="launch", outcome="refused", username="dev-manager").count() == 1


@pytest.mark.django_db(transaction=True)
def test_launch_out_of_order_is_refused_and_audited():
    configure_environments({})
    user = make_user()
    plan = services.create_plan("2.8.5", commit="a" * 39 + "1", user=user)
    step = services.get_step(plan, 4)

    with tasks_not_sent() as enqueue:
        with pytest.raises(services.ActionRefused, match=r"step 2 \(.*\) is pending"):
            services.launch(step, user)

    enqueue.assert_not_called()
    _untouched(step)
    (event,) = AuditEvent.objects.filter(action="launch")
    assert event.outcome == "refused" and "cannot start" in event.message
    assert event.step_id == step.pk and event.username == "ops-lead"
