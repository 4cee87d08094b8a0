"""Operator controls of a running step and the engine's guards: pause, resume and abort at site
granularity, the failure threshold and retry-failed, simultaneous launches, one active step per
environment, and the database cost of the per-site loop.
"""

from __future__ import annotations

import re
import threading
import time
from unittest.mock import patch

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from releases import services
from releases.models import AuditEvent, SiteResult, StepRun
from releases.states import SiteState, StepState
from tests.support import (
    R,
    configure_environments,
    make_user,
    run_engine,
    sites,
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


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def small_prod():
    """A simulated PROD of 200 sites (about 175 targeted by step 14)."""
    server = start_prod(200)
    yield server
    server.stop()


@pytest.fixture
def prod_sim():
    server = start_prod()
    yield server
    server.stop()


def _step_14_underway(sim, worker, done: int = 20, **environment):
    """Step 14 running on `worker` (the shared `celery_worker`), 50 ms per write, two at a time,
    `done` sites already updated."""
    configure_environments({"PROD": sim}, parallelism=2, **environment)
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = prepare_prod(plan, user)
    sim.set_faults(write_latency_ms=50)
    services.launch(step, user)
    wait_for(lambda: site_counts(step)[SiteState.SUCCEEDED] >= done, what=f"{done} updated sites")
    return plan, step, user, worker


def _wait_state(step: StepRun, state: str, timeout: float = 30) -> StepRun:
    wait_for(lambda: StepRun.objects.filter(pk=step.pk, state=state).exists(), timeout=timeout, what=state)
    step.refresh_from_db()
    return step


def _ids(step: StepRun, *states: str) -> set[str]:
    return set(SiteResult.objects.filter(step=step, state__in=states).values_list("site_id", flat=True))


# -- pause, resume, abort ----------------------------------------------------------------------


@pytest.mark.slow
def test_pause_stops_a_running_step_between_sites_and_nothing_more_is_sent(small_prod, celery_worker):
    plan, step, user, _ = _step_14_underway(small_prod, celery_worker)

    services.pause(plan, user)
    _wait_state(step, StepState.PAUSED)
    sent = client_updates(small_prod)
    time.sleep(1.5)

    assert client_updates(small_prod) == sent, "sites were PATCHed after the step paused"
    assert step.message == "paused by the operator" and step.lease_owner == ""
    counts = site_counts(step)
    assert set(counts) == {SiteState.SUCCEEDED, SiteState.PENDING}, counts
    # Every site Atlas updated is recorded as done; every other site is pending, none in doubt.
    assert _ids(step, SiteState.SUCCEEDED) == set(sent)
    assert counts[SiteState.PENDING] > counts[SiteState.SUCCEEDED]
    assert AuditEvent.objects.filter(action="pause", step=step, username="ops-lead", outcome="ok").exists()
    assert AuditEvent.objects.filter(action="step_paused", step=step).exists()


@pytest.mark.slow
def test_resume_after_pause_completes_without_patching_any_site_twice(small_prod, celery_worker):
    plan, step, user, _ = _step_14_underway(small_prod, celery_worker)
    services.pause(plan, user)
    _wait_state(step, StepState.PAUSED)
    before = len(small_prod.events.of_kind("site_update"))
    pending = _ids(step, SiteState.PENDING)

    services.resume(plan, user)
    wait_until_idle(plan, timeout=60)

    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED, step.message
    targets = _ids(step, SiteState.SUCCEEDED)
    assert step.counts()["targeted"] == len(targets)
    assert sorted(client_updates(small_prod, since=before)) == sorted(pending)
    assert sorted(client_updates(small_prod)) == sorted(targets)
    profile = release_item(small_prod)["_id"]
    assert targets <= {str(s["_id"]) for s in sites(small_prod, **{"code.profile": profile})}


@pytest.mark.slow
def test_abort_ends_the_step_and_leaves_the_remaining_sites_untouched(small_prod, celery_worker):
    plan, step, user, _ = _step_14_underway(small_prod, celery_worker)
    before = {str(s["_id"]): s["code"]["profile"] for s in sites(small_prod)}

    services.abort(plan, user)
    _wait_state(step, StepState.ABORTED)
    sent = client_updates(small_prod)
    time.sleep(1.5)

    assert client_updates(small_prod) == sent
    assert step.message == "aborted by the operator" and step.finished_at is not None
    remaining = _ids(step, SiteState.PENDING)
    assert remaining and _ids(step, SiteState.DISPATCHED, SiteState.FAILED) == set()
    assert _ids(step, SiteState.SUCCEEDED) == set(sent)
    now = {str(s["_id"]): s["code"]["profile"] for s in sites(small_prod)}
    assert {i: now[i] for i in remaining} == {i: before[i] for i in remaining}
    assert AuditEvent.objects.filter(action="abort", step=step, outcome="ok").exists()


# -- the failure threshold and retry-failed ---------------------------------------------------


def _past_threshold(sim, worker):
    plan, step, user, worker = _step_14_underway(
        sim, worker, done=10, failure_threshold_count=3, max_attempts=2
    )
    # Every site write now races another writer (412 after 412): per-site failures. (Atlas not
    # answering at all is an outage, which pauses the step on its own: see test_engine_safety.)
    sim.set_faults(write_latency_ms=50, etag_race_rate=1.0)
    _wait_state(step, StepState.PAUSED)
    sim.set_faults()
    return plan, step, user


@pytest.mark.slow
def test_failures_past_the_threshold_pause_the_step_with_a_message_naming_it(small_prod, celery_worker):
    _, step, _ = _past_threshold(small_prod, celery_worker)

    match = re.fullmatch(r"failure threshold \(3 sites\) reached: (\d+) of (\d+) sites failed", step.message)
    assert match, step.message
    counts = site_counts(step)
    failed, targeted = int(match[1]), int(match[2])
    # Answers already on their way when the threshold was reached are recorded and counted; a
    # write between two attempts (two at a time) is not sent again and stays dispatched, for a re-read.
    assert failed >= 3 and failed == counts[SiteState.FAILED]
    assert targeted == sum(counts.values())
    assert counts[SiteState.PENDING] > 0 and counts[SiteState.DISPATCHED] <= 2
    failing = SiteResult.objects.filter(step=step, state=SiteState.FAILED)
    assert {r.http_status for r in failing} == {412}


@pytest.mark.django_db(transaction=True)
def test_a_percent_threshold_pauses_the_step_in_process(prod_sim):
    configure_environments({"PROD": prod_sim}, failure_threshold_percent=1.0, max_attempts=2)
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = prepare_prod(plan, user)
    prod_sim.set_faults(etag_race_rate=1.0)  # every site write now loses a race (412 after 412)

    assert run_inline(step, user) == StepState.PAUSED

    step.refresh_from_db()
    counts = site_counts(step)
    targeted = sum(counts.values())
    assert step.message.startswith("failure threshold (1%) reached: "), step.message
    # Reached against the sites frozen so far (batch 1 while later batches are read: sooner,
    # never later); writes in flight then end, queued ones are not sent: at most a window of
    # 2 × parallelism + 8 beyond the 1%.
    assert targeted > 300 and 1 <= counts[SiteState.FAILED] < 0.01 * targeted + 2 * 4 + 8 + 4
    assert counts[SiteState.SUCCEEDED] == 0 and client_updates(prod_sim) == []


@pytest.mark.slow
def test_retry_failed_sends_only_the_failed_and_unstarted_sites(small_prod, celery_worker):
    _, step, user = _past_threshold(small_prod, celery_worker)
    rows = SiteResult.objects.filter(step=step).count()
    owed = _ids(step, SiteState.FAILED, SiteState.PENDING, SiteState.DISPATCHED)
    done = _ids(step, SiteState.SUCCEEDED)
    before = len(small_prod.events.of_kind("site_update"))

    services.retry_failed(step, user)
    wait_until_idle(step.plan, timeout=60)

    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED, step.message
    assert SiteResult.objects.filter(step=step).count() == rows
    assert sorted(client_updates(small_prod, since=before)) == sorted(owed)
    assert _ids(step, SiteState.SUCCEEDED) == owed | done
    assert AuditEvent.objects.filter(action="retry_failed", step=step, outcome="ok").exists()


# -- one launch, one active step per environment ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_launches_of_a_step_start_it_exactly_once():
    configure_environments({})
    plan = services.create_plan("2.8.5", commit=R, user=make_user())
    step_id = services.get_step(plan, 2).pk
    barrier = threading.Barrier(2)
    outcomes: list = []

    def launch() -> None:
        try:
            step = StepRun.objects.select_related("plan", "environment").get(pk=step_id)
            user = get_user_model().objects.get(username="ops-lead")
            barrier.wait(timeout=10)
            services.launch(step, user)
            outcomes.append("launched")
        except Exception as exc:  # noqa: BLE001 - anything but a clean refusal fails below
            outcomes.append(exc)
        finally:
            connection.close()

    with tasks_not_sent() as enqueue:
        threads = [threading.Thread(target=launch) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert outcomes.count("launched") == 1, outcomes
    (refusal,) = [o for o in outcomes if o != "launched"]
    assert isinstance(refusal, services.ActionRefused), repr(refusal)
    assert enqueue.call_count == 1
    step = StepRun.objects.get(pk=step_id)
    assert step.state == StepState.RUNNING and len(step.task_ids) == 1
    launches = AuditEvent.objects.filter(action="launch", step=step)
    assert sorted(launches.values_list("outcome", flat=True)) == ["ok", "refused"]


@pytest.mark.django_db(transaction=True)
def test_a_second_plan_cannot_start_a_step_on_a_busy_environment():
    configure_environments({})
    user = make_user()
    first = services.create_plan("2.8.5", commit=R, user=user)
    second = services.create_plan("2.8.6", commit="c" * 40, user=user)
    with tasks_not_sent():
        services.launch(services.get_step(first, 2), user)
        with pytest.raises(services.ActionRefused, match=r"DEV is busy with 2\.8\.5 step 2"):
            services.launch(services.get_step(second, 2), user)

    assert services.get_step(second, 2).state == StepState.PENDING
    assert AuditEvent.objects.filter(action="launch", outcome="refused", plan=second).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_a_second_active_step_per_environment_even_past_the_guard():
    configure_environments({})
    user = make_user()
    first = services.create_plan("2.8.5", commit=R, user=user)
    second = services.create_plan("2.8.6", commit="c" * 40, user=user)
    with tasks_not_sent():
        services.launch(services.get_step(first, 2), user)
    other = services.get_step(second, 2)

    constraints = connection.introspection.get_constraints(connection.cursor(), StepRun._meta.db_table)
    assert "one_active_step_per_environment" in constraints
    with pytest.raises(IntegrityError), transaction.atomic():
        StepRun.objects.filter(pk=other.pk).update(state=StepState.PAUSED)
    # Two launches racing past the blockers check (e.g. on PostgreSQL) still cannot both start.
    with patch.object(StepRun, "blockers", return_value=[]), tasks_not_sent():
        with pytest.raises(services.ActionRefused, match="DEV is already running another step"):
            services.launch(other, user)
    assert services.get_step(second, 2).state == StepState.PENDING
    assert AuditEvent.objects.filter(action="launch", outcome="refused", plan=second).count() == 1


# -- database cost of the per-site loop ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_site_loop_costs_well_under_one_query_per_site(prod_sim):
    configure_environments({"PROD": prod_sim}, parallelism=4)
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = prepare_prod(plan, user)
    with tasks_not_sent() as enqueued:
        services.launch(step, user)
    assert enqueued.call_count == 1  # the task that was not sent: the engine runs here instead

    with CaptureQueriesContext(connection) as queries:
        assert run_engine(step) == StepState.SUCCEEDED

    counts = step.counts()
    assert counts["succeeded"] == counts["targeted"] > 300
    per_site = len(queries) / counts["targeted"]
    assert per_site < 0.5, f"{len(queries)} queries for {counts['targeted']} sites"
