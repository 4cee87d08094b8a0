"""Drills on real processes: Redis restarted under a running step, two workers sharing the
steps of several environments, a worker killed with no replacement for a while, and Atlas not
answering mid-batch. Each is judged from the simulator's side (its event log and its
in-flight write counter).

The Redis drill starts its own `redis-server` on a free port (never the shared one) and is
skipped where the binary is absent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.utils import timezone

from releases import services
from releases.models import AuditEvent, SiteResult, StepRun
from releases.states import SiteState, StepState
from tests.support import R, configure_environments, make_user
from tests.test_engine_faults import client_updates, run_inline, site_counts, start_prod, wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a free port: no persistence, so a restart loses every key."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self.answers, timeout=10, what="redis-server")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def small_prod():
    server = start_prod(200)
    yield server
    server.stop()


def prepare_prod(plan, user, commit: str) -> StepRun:
    """PROD step 14 of `plan` ready to launch (as test_engine_faults', with the final `commit`)."""
    for number in (2, 3, 4, 5, 6, 8, 9, 10, 11, 13):
        if number == 8:
            services.finalize(plan, tag=plan.version, commit=commit, user=user)
        services.skip(services.get_step(plan, number), user, "not needed by this test")
        if number == 11:
            assert run_inline(services.get_step(plan, 12), user) == StepState.SUCCEEDED
    return services.get_step(plan, 14)


def launch_from_the_command_line(version: str, env: dict) -> None:
    """`manage.py release launch VERSION --step 14` in its own process, on the broker `env` names."""
    result = subprocess.run(
        [sys.executable, "manage.py", "release", "launch", version, "--step", "14", "--user", "ops-lead", "--yes"],
        cwd=ROOT, env=env, input="PROD\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def wait_succeeded(step: StepRun, worker, timeout: float = 90) -> StepRun:
    wait_for(
        lambda: StepRun.objects.filter(pk=step.pk).exclude(state=StepState.RUNNING).exists(),
        timeout=timeout,
        what=f"step {step.number} of {step.plan.version} to end",
    )
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED, f"{step.message}\n{worker.output()[-3000:]}"
    return step


@pytest.mark.slow
def test_a_worker_outlives_a_redis_restart_during_step_14_and_takes_the_next_step(
    small_prod, own_redis, start_worker, process_env
):
    configure_environments({"PROD": small_prod}, parallelism=2)
    user = make_user()
    first = prepare_prod(services.create_plan("2.8.5", commit=R, user=user), user, commit="b" * 40)
    env = process_env(CELERY_BROKER_URL=own_redis.url)
    worker = start_worker("redis", env={"CELERY_BROKER_URL": own_redis.url})
    small_prod.set_faults(write_latency_ms=100)

    launch_from_the_command_line("2.8.5", env)
    wait_for(lambda: site_counts(first)[SiteState.SUCCEEDED] >= 20, what="20 updated sites")
    own_redis.stop()  # Redis goes away while the task is unacknowledged, and comes back empty
    time.sleep(3)
    own_redis.start()

    wait_succeeded(first, worker)
    small_prod.set_faults()
    time.sleep(3)  # the crash came as the step ended (its late ack); give it time to show
    assert worker.alive(), f"the worker exited:\n{worker.output()[-3000:]}"
    targets = set(SiteResult.objects.filter(step=first).values_list("site_id", flat=True))
    assert len(targets) > 150 and Counter(client_updates(small_prod)) == Counter(targets)

    # The next step, launched on the restarted Redis, runs on the same worker process.
    second = prepare_prod(services.create_plan("2.8.6", commit="c" * 40, user=user), user, commit="d" * 40)
    before = len(client_updates(small_prod))
    launch_from_the_command_line("2.8.6", env)
    wait_succeeded(second, worker)
    assert worker.owns(AuditEvent.objects.get(step=second, action="step_succeeded").parameters["owner"])
    assert sorted(client_updates(small_prod, since=before)) == sorted(targets)
    assert worker.alive()


@pytest.mark.slow
def test_two_workers_share_steps_within_the_environments_parallelism_one_step_at_a_time(
    small_prod, start_worker
):
    from celery import current_app

    configure_environments({"PROD": small_prod}, parallelism=3)
    user = make_user()
    first = prepare_prod(services.create_plan("2.8.5", commit=R, user=user), user, commit="b" * 40)
    second = prepare_prod(services.create_plan("2.8.6", commit="c" * 40, user=user), user, commit="d" * 40)
    workers = [start_worker("left"), start_worker("right")]  # two hosts' worth: distinct -n names
    small_prod.set_faults(write_latency_ms=50)
    small_prod.injector.max_writes_in_flight = 0

    services.launch(first, user)
    for _ in range(6):  # what several watchdogs do for a step they think is stalled
        current_app.send_task("releases.tasks.run_step", args=(first.pk,))
    wait_for(lambda: site_counts(first)[SiteState.SUCCEEDED] >= 10, what="10 updated sites")
    with pytest.raises(services.ActionRefused, match="PROD"):
        services.launch(second, user)  # one step per environment, whichever worker would take it

    wait_succeeded(first, workers[0])
    # Both workers were handed the step; the lease let one of them run it.
    assert all("releases.tasks.run_step" in w.output() and "received" in w.output() for w in workers)
    assert 2 <= small_prod.injector.max_writes_in_flight <= 3
    targets = set(SiteResult.objects.filter(step=first).values_list("site_id", flat=True))
    updates = Counter(client_updates(small_prod))
    assert set(updates) == targets and max(updates.values()) == 1
    assert AuditEvent.objects.filter(step=first, action="step_succeeded").count() == 1
    assert StepRun.objects.get(pk=second.pk).state == StepState.PENDING


@pytest.mark.slow
def test_a_worker_killed_with_no_replacement_for_a_while_then_a_new_one_finishes_the_step(
    small_prod, start_worker
):
    """The issue's "no replacement for two minutes", at test scale: tests run with a 4 s step
    lease (conftest TEST_ENV), so a 15 s gap — nearly four leases, long enough for the lease to
    have lapsed several times over with nobody to notice — stands for the two minutes."""
    configure_environments({"PROD": small_prod}, parallelism=2)
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    step = prepare_prod(plan, user, commit="b" * 40)
    small_prod.set_faults(write_latency_ms=60)
    first = start_worker("first")

    services.launch(step, user)
    wait_for(lambda: site_counts(step)[SiteState.SUCCEEDED] >= 30, what="30 updated sites")
    assert first.owns(StepRun.objects.get(pk=step.pk).lease_owner)
    first.kill()
    time.sleep(1)  # the PATCHes it had in flight (60 ms of latency) land in Atlas all the same
    sent_at_kill = len(client_updates(small_prod))
    time.sleep(14)

    # Nobody worked on it meanwhile: Atlas saw no write, and the step is still running, unowned.
    assert len(client_updates(small_prod)) == sent_at_kill
    stalled = StepRun.objects.get(pk=step.pk)
    assert stalled.state == StepState.RUNNING and stalled.lease_expires_at < timezone.now()

    second = start_worker("second")
    wait_succeeded(step, second)
    finished = AuditEvent.objects.get(step=step, action="step_succeeded")
    assert second.owns(finished.parameters["owner"])
    targets = set(SiteResult.objects.filter(step=step).values_list("site_id", flat=True))
    updates = Counter(client_updates(small_prod))
    assert len(targets) > 150 and set(updates) == targets
    assert [site for site, n in updates.items() if n > 1] == [], "a site got the profile PATCH twice"


@pytest.mark.slow
def test_atlas_not_answering_mid_batch_pauses_the_step_saying_why_then_a_resume_completes_it(
    small_prod, start_worker
):
    """Atlas "not answering" (the 503 variant is in test_engine_safety): every answer held back
    past the 1 s read timeout after Atlas applied the request, so the worker cannot know which
    PATCHes landed. The step pauses saying since when Atlas is unreachable, fails no site, and
    after Atlas is back a resume finishes it without PATCHing any site twice."""
    configure_environments({"PROD": small_prod}, parallelism=2, max_attempts=2, read_timeout_seconds=1)
    user = make_user()
    step = prepare_prod(services.create_plan("2.8.5", commit=R, user=user), user, commit="b" * 40)
    worker = start_worker("outage")
    small_prod.set_faults(write_latency_ms=40)

    services.launch(step, user)
    wait_for(lambda: site_counts(step)[SiteState.SUCCEEDED] >= 20, what="20 updated sites")
    small_prod.set_faults(slow_ms=2500, slow_rate=1.0)  # Atlas stops answering in time
    wait_for(
        lambda: StepRun.objects.filter(pk=step.pk, state=StepState.PAUSED).exists(),
        timeout=120,
        what="the step to pause",
    )
    paused = StepRun.objects.get(pk=step.pk)
    assert paused.message.startswith("Atlas PROD unreachable since "), paused.message
    assert site_counts(step)[SiteState.FAILED] == 0, "an outage is not a site failure"

    small_prod.set_faults()  # Atlas is back
    services.resume(step.plan, user)
    wait_succeeded(step, worker, timeout=120)
    targets = set(SiteResult.objects.filter(step=step).values_list("site_id", flat=True))
    updates = Counter(client_updates(small_prod))
    assert len(targets) > 150 and set(updates) == targets
    assert [site for site, n in updates.items() if n > 1] == [], "a site got the profile PATCH twice"
    # PATCHes that landed unanswered were read back after the resume, not sent again.
    assert SiteResult.objects.filter(step=step, message="already on the release profile").exists()
