"""Stops and confirmations hold at their edges (commit a44442c), each judged from Atlas's side: the
simulator's request log and its events, then the step's end state and message.

1. A pause that comes while a code step's write waits to be retried after a 503 sends no retry:
   step 9's commit PATCH, step 9's `meta.is_current` PATCH, step 2's POST /code.
2. A pause or abort asked in the last heartbeat interval of a stage step's deploy wait stops the
   step, and the stage does not go on (its next step would delete sites).
3. A `--yes` relaunch is not held to an earlier launch's confirmed counts.
4. A site step whose preview failed (so the confirmation shows none of its batches) pauses before
   its first write.
5. Resuming a site step whose snapshot never finished reads it again without its stale batches.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from unittest.mock import patch

import pytest

from atlas.client import AtlasClient
from atlas.simulator import SimulatorServer
from releases import reports, services
from releases.engine.context import StepContext
from releases.engine.snapshot import Snapshot
from releases.models import SiteResult, StepRun, UpdateGroup
from releases.states import StepState
from tests.support import R, T, code_items, configure_environments, make_user, run_engine, tasks_not_sent
from tests.test_engine_code_stop import code_updates, patches_of, step_9_with_sites_on_the_item
from tests.test_engine_faults import client_updates, release_item, wait_for
from tests.test_engine_safety import removals, step_14

pytestmark = pytest.mark.django_db(transaction=True)

PROD_SITES = 300  # two or three small batches on step 14 (about 20 sites each)
DEPLOY_WAIT = 0.5  # seconds: well inside one production heartbeat interval (2 s)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Hold:
    """Holds the step's thread at one point (call it there) until this test's thread, the
    operator, has acted and released it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.released = threading.Event()

    def __call__(self) -> None:
        self.reached.set()
        assert self.released.wait(30), "never released"


@pytest.fixture
def held_in_backoff(monkeypatch) -> Hold:
    """The client's backoff after a write's 503 holds the step's thread (instead of sleeping). A
    read retried meanwhile (a loaded machine: a slow answer) backs off as usual: stopping there
    would stop the step before the write this is about."""
    hold = Hold()
    real = AtlasClient._sleep_backoff

    def backoff(client, attempt):
        if sys._getframe(1).f_code.co_name == "_retry_reads":
            return real(client, attempt)
        return hold()

    monkeypatch.setattr(AtlasClient, "_sleep_backoff", backoff)
    return hold


def stop_while_held(
    step: StepRun, user, hold: Hold, action, *, stage: bool = False, first: Callable[[], None] = lambda: None
) -> tuple[str, float]:
    """Launch `step` (a stage when `stage`) and run it on a thread of its own, as a worker would.
    Once its thread is held (and `first` returned), the operator asks for `action` (pause or
    abort). Returns how the step ended and when the request was made."""
    ended: list = []
    with tasks_not_sent():
        services.launch(step, user, stage=stage)
        runner = threading.Thread(target=lambda: ended.append(run_engine(step)))
        runner.start()
        assert hold.reached.wait(30), "the step never reached the point to stop at"
        first()
        asked_at = time.time()
        action(step.plan, user)
        hold.released.set()
        runner.join(60)
    assert not runner.is_alive()
    return ended[0], asked_at


def writes_since(sim: SimulatorServer, moment: float) -> list[list]:
    """Every write (not a GET) that reached Atlas at `moment` or later."""
    return [entry for entry in sim.injector.requests if entry[0] != "GET" and entry[2] >= moment]


def step_2_on(dev: SimulatorServer, **environment) -> tuple[StepRun, object]:
    """DEV pointed at `dev` (its requests recorded), a new release whose step 2 is next, the operator."""
    configure_environments({"DEV": dev}, **environment)
    user = make_user()
    step = services.get_step(services.create_plan("2.8.5", commit=R, user=user), 2)
    dev.injector.record = True
    return step, user


def posts_of_code(sim: SimulatorServer) -> list[list]:
    return [e for e in sim.injector.requests if e[0] == "POST" and e[1].rstrip("/").endswith("/code")]


def current_express(sim: SimulatorServer) -> list[str]:
    return [
        c["meta"]["version"] for c in code_items(sim, **{"meta.name": "express", "meta.is_current": True})
    ]


def step_14_in_batches(simulator, batches: int) -> tuple[SimulatorServer, StepRun, object, list[UpdateGroup]]:
    """A small PROD whose step 14 is next, with only its first `batches` update groups enabled."""
    prod = simulator.of("PROD", sites=PROD_SITES)
    step, user = step_14(prod)
    groups = list(
        UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position", "id")
    )
    UpdateGroup.objects.filter(pk__in=[g.pk for g in groups[batches:]]).update(enabled=False)
    return prod, step, user, groups[:batches]


def targets(step: StepRun) -> list[str]:
    return list(SiteResult.objects.filter(step=step).values_list("site_id", flat=True))


def assert_each_target_written_once(prod: SimulatorServer, step: StepRun) -> None:
    written = Counter(client_updates(prod))
    assert set(written) == set(targets(step)), f"{len(written)} sites written, {len(targets(step))} targets"
    assert set(written.values()) == {1}, f"sites written more than once: {written}"


# -- 1. no retry of a code step's write after a pause --------------------------------------------


def test_a_pause_in_the_backoff_after_a_503_on_step_9s_commit_patch_sends_no_retry(
    simulator, held_in_backoff, monkeypatch
):
    sim = simulator.of("TEST")
    step, user, code_id, ids = step_9_with_sites_on_the_item(sim)
    sim.set_faults(fail_next=1, fail_methods=("PATCH",))  # the commit PATCH is refused at the door

    state, asked_at = stop_while_held(step, user, held_in_backoff, services.pause)

    assert writes_since(sim, asked_at) == [], "the commit PATCH was sent again after the pause"
    assert [entry[4] for entry in patches_of(sim, code_id)] == [503]
    assert code_updates(sim, code_id) == [] and sim.events.of_kind("cascade") == []
    assert sim.events.of_kind("demote") == []
    item = release_item(sim)
    assert item["commit_hash"] == R and item["meta"]["is_current"] is False
    assert state == StepState.PAUSED
    step.refresh_from_db()
    assert step.message.startswith("paused by the operator: ")
    assert f"/code/{code_id}: PATCH not sent: the step is stopping" in step.message
    assert step.message.endswith("is read from Atlas again before anything is sent: resume to finish")
    assert step.result["commit_patch"] == "sent", "a resume reads Atlas before sending it"

    # The 503 proves the PATCH was never applied: no grace period needed to see that.
    monkeypatch.setattr("releases.engine.code.STORE_GRACE_SECONDS", 0)
    before = len(sim.injector.requests)
    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED, step.message
    assert [entry[4] for entry in patches_of(sim, code_id, since=before)] == [200, 200]
    assert [e["commit_hash"] for e in code_updates(sim, code_id)] == [T, None]
    assert sorted(sim.events.ids("cascade")) == sorted(ids), "the cascade ran once per site"
    assert len(sim.events.of_kind("demote")) == 1


def test_a_pause_in_the_backoff_after_a_503_on_step_9s_is_current_patch_sends_no_retry(
    simulator, held_in_backoff, monkeypatch
):
    sim = simulator.of("TEST")
    step, user, code_id, ids = step_9_with_sites_on_the_item(sim)
    sim.set_faults()  # no cascade delay
    real_patch_code = AtlasClient.patch_code
    armed = [True]

    def patch_code(client, item_id, changes, *, etag):
        if "meta" in changes and armed and armed.pop():  # the first is_current PATCH
            sim.set_faults(fail_next=1, fail_methods=("PATCH",))
        return real_patch_code(client, item_id, changes, etag=etag)

    monkeypatch.setattr(AtlasClient, "patch_code", patch_code)

    state, asked_at = stop_while_held(step, user, held_in_backoff, services.pause)

    assert writes_since(sim, asked_at) == [], "the is_current PATCH was sent again after the pause"
    assert [entry[4] for entry in patches_of(sim, code_id)] == [200, 503]
    assert [e["commit_hash"] for e in code_updates(sim, code_id)] == [T], "only the commit PATCH landed"
    assert sorted(sim.events.ids("cascade")) == sorted(ids)
    assert sim.events.of_kind("demote") == [], "the current item was demoted"
    item = release_item(sim)
    assert item["commit_hash"] == T and item["meta"]["is_current"] is False
    assert current_express(sim) == ["2.8.4"]
    assert state == StepState.PAUSED
    step.refresh_from_db()
    assert step.message.startswith("paused by the operator: ")
    assert f"/code/{code_id}: PATCH not sent: the step is stopping" in step.message
    assert step.message.endswith("resume to finish")
    assert step.result["commit_patch"] == "answered" and "made_current" not in step.result

    before = len(sim.injector.requests)
    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED, step.message
    assert [entry[4] for entry in patches_of(sim, code_id, since=before)] == [200], (
        "only the is_current PATCH"
    )
    assert [e["commit_hash"] for e in code_updates(sim, code_id)] == [T, None]
    assert sorted(sim.events.ids("cascade")) == sorted(ids), "no second cascade"
    assert len(sim.events.of_kind("demote")) == 1
    assert current_express(sim) == ["2.8.5"]


def test_a_pause_in_the_backoff_after_a_503_on_step_2s_post_sends_no_retry(simulator, held_in_backoff):
    dev = simulator.of("DEV")
    step, user = step_2_on(dev)
    dev.set_faults(fail_next=1, fail_methods=("POST",))

    state, asked_at = stop_while_held(step, user, held_in_backoff, services.pause)

    assert writes_since(dev, asked_at) == [], "the POST was sent again after the pause"
    assert [entry[4] for entry in posts_of_code(dev)] == [503]
    assert code_items(dev, **{"meta.version": "2.8.5"}) == [] and dev.events.of_kind("code_deploy") == []
    assert dev.events.of_kind("demote") == [] and current_express(dev) == ["2.8.4"]
    assert state == StepState.PAUSED
    step.refresh_from_db()
    assert step.message.startswith("paused by the operator: ")
    assert "/code: POST not sent: the step is stopping" in step.message
    assert step.message.endswith("resume to finish")

    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED, step.message
    assert [entry[4] for entry in posts_of_code(dev)] == [503, 201]
    assert len(code_items(dev, **{"meta.version": "2.8.5"})) == 1
    assert len(dev.events.of_kind("code_deploy")) == 1 and len(dev.events.of_kind("demote")) == 1
    assert current_express(dev) == ["2.8.5"]


# -- 2. a stop at the very end of a stage step's deploy wait --------------------------------------


@pytest.mark.parametrize(
    "action, stopped, then",
    [
        (services.pause, StepState.PAUSED, "resume to finish"),
        (services.abort, StepState.ABORTED, "launch the step again to finish"),
    ],
    ids=["pause", "abort"],
)
def test_a_stop_asked_just_after_a_heartbeat_in_step_2s_deploy_wait_ends_the_stage_there(
    simulator, settings, monkeypatch, action, stopped, then
):
    settings.STEP_LEASE_SECONDS = 30.0  # the production heartbeat: a renewal every 2 s
    dev = simulator.of("DEV")
    step, user = step_2_on(dev, deploy_wait_seconds=DEPLOY_WAIT)
    hold, beats = Hold(), threading.Event()
    real_heartbeat, real_sleep = StepRun.heartbeat, StepContext.sleep

    def heartbeat(run, owner, activity=None):
        answer = real_heartbeat(run, owner, activity)
        if threading.current_thread().name.startswith("lease-"):  # the heartbeat thread's renewal
            beats.set()
        return answer

    def sleep(ctx, seconds):
        if seconds == DEPLOY_WAIT:  # the deploy wait starts once the operator has asked
            hold()
        return real_sleep(ctx, seconds)

    def just_after_a_heartbeat():
        beats.clear()
        assert beats.wait(10), "no heartbeat"

    monkeypatch.setattr(StepRun, "heartbeat", heartbeat)
    monkeypatch.setattr(StepContext, "sleep", sleep)

    state, asked_at = stop_while_held(step, user, hold, action, stage=True, first=just_after_a_heartbeat)
    with tasks_not_sent():  # whatever the stage launched runs, as its worker would
        for launched in step.plan.steps.filter(state=StepState.RUNNING).exclude(pk=step.pk):
            run_engine(launched, owner="next-worker")

    assert writes_since(dev, asked_at) == [], "the stage went on after the request"
    assert removals(dev) == []
    (item,) = code_items(dev, **{"meta.version": "2.8.5"})
    assert [entry[4] for entry in posts_of_code(dev)] == [201] and len(dev.events.of_kind("demote")) == 1
    assert state == stopped
    step.refresh_from_db()
    assert step.message == (
        f"{'paused' if stopped == StepState.PAUSED else 'aborted'} by the operator: code item {item['_id']} "
        f"on {R[:12]}, stored; the wait for Atlas's code deploy did not end: {then}"
    )
    assert [s.state for s in step.plan.steps.filter(number__in=(3, 4)).order_by("number")] == [
        StepState.PENDING,
        StepState.PENDING,
    ]


# -- 3.-5. what the operator confirmed ------------------------------------------------------------


def test_a_yes_relaunch_is_not_held_to_an_earlier_launchs_confirmed_counts(simulator):
    prod, step, user, (first, _) = step_14_in_batches(simulator, batches=2)
    (preview,) = reports.preview(step.plan, 14)
    with tasks_not_sent():
        services.launch(step, user, confirmed={14: reports.confirmed_counts([preview])[14]})
    services.abort(step.plan, user)  # before the worker read anything
    run_engine(step)
    step.refresh_from_db()
    assert step.state == StepState.ABORTED and not step.result.get("snapshot")
    assert client_updates(prod) == []

    UpdateGroup.objects.filter(pk=first.pk).update(name="renamed first group")  # the same sites
    with tasks_not_sent():
        services.launch(step, user)  # `release launch --yes`: nothing shown, nothing confirmed
    state = run_engine(step)

    step.refresh_from_db()
    assert state == StepState.SUCCEEDED, step.message
    assert_each_target_written_once(prod, step)
    assert step.message.startswith(f"{len(targets(step))} succeeded, 0 failed, 0 skipped")
    assert "confirmed" not in step.message and step.confirmed_targets is None


def test_a_site_step_whose_preview_failed_confirms_no_batch_and_pauses_before_any_write(simulator):
    prod, step, user, (first, _) = step_14_in_batches(simulator, batches=2)
    prod.set_faults(fail_rate=1.0, fail_methods=("GET",))  # Atlas answers no read of the preview
    with patch.object(AtlasClient, "_sleep_backoff", lambda client, attempt: None):
        radius = reports.blast_radius(step)
    prod.set_faults()
    assert [p["number"] for p in radius["errors"]] == [14] and radius["confirmed"] == {}

    with tasks_not_sent():
        services.launch(step, user, confirmed=radius["confirmed"])  # as the admin page's token has it
    assert run_engine(step) == StepState.PAUSED

    assert client_updates(prod) == [], "a batch nobody confirmed was written"
    step.refresh_from_db()
    size = SiteResult.objects.filter(step=step, batch_index=0).count()
    assert step.message == (
        f"more sites than confirmed: {first.name} has {size} (not in the confirmation). Nothing of that "
        "batch was written: review the targets (release preview) and resume to go on with them, or abort"
    )

    with tasks_not_sent():
        services.resume(step.plan, user)  # the operator reviewed the targets
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED, step.message
    assert_each_target_written_once(prod, step)


def test_resuming_a_snapshot_that_never_finished_reads_it_again_without_its_stale_batches(
    simulator, monkeypatch
):
    prod, step, user, groups = step_14_in_batches(simulator, batches=3)
    monkeypatch.setattr(AtlasClient, "_sleep_backoff", lambda client, attempt: None)
    real_read_batch = Snapshot._read_batch

    def read_batch(snapshot, index, group):
        if index == 1:  # batch 1 is frozen and written before Atlas stops answering reads
            first = SiteResult.objects.filter(step=step, batch_index=0).count()
            wait_for(lambda: len(client_updates(prod)) >= first, timeout=30, what="batch 1's writes")
            prod.set_faults(fail_rate=1.0, fail_methods=("GET",))
        return real_read_batch(snapshot, index, group)

    monkeypatch.setattr(Snapshot, "_read_batch", read_batch)
    with tasks_not_sent():
        services.launch(step, user)
    assert run_engine(step) == StepState.PAUSED
    prod.set_faults()  # Atlas is back
    monkeypatch.setattr(Snapshot, "_read_batch", real_read_batch)
    step.refresh_from_db()
    assert step.message.startswith("Atlas PROD unreachable since ")
    assert not step.result.get("snapshot") and [b["name"] for b in step.result["batches"]] == [groups[0].name]
    first_batch = SiteResult.objects.filter(step=step, batch_index=0).values_list("site_id", flat=True)
    assert sorted(client_updates(prod)) == sorted(first_batch), "batch 1 written, nothing more"

    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED, step.message

    assert_each_target_written_once(prod, step)
    step.refresh_from_db()
    sizes = Counter(SiteResult.objects.filter(step=step).values_list("batch_index", flat=True))
    assert [(b["name"], b["count"]) for b in step.result["batches"]] == [
        (group.name, sizes[index]) for index, group in enumerate(groups)
    ]
    frozen = reports.frozen_targets(step)
    assert [(b["name"], b["done"], b["remaining"]) for b in frozen["batches"]] == [
        (group.name, sizes[index], 0) for index, group in enumerate(groups)
    ]
    assert step.message.startswith(f"{sum(sizes.values())} succeeded, 0 failed, 0 skipped")
