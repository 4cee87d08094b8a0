"""Test infrastructure shared by the whole suite: an isolated broker, a file-backed test database
that worker processes can open, and real Celery worker processes.

Without CELERY_BROKER_URL the suite uses the embedded filesystem broker in a temporary folder;
CI sets a Redis URL (and DATABASE_URL for PostgreSQL) and the same fixtures run against those.

Workers are started with the production worker command (`python -m portal.worker`: prefork,
three pool processes), each in its own process group. Two fixtures:
- `celery_worker`: one worker shared by the session, on its own queue, frozen between the tests
  that use it. For tests that only need steps to run.
- `start_worker`: the test's own workers, for tests that kill, stop or reconfigure a worker, or
  need several. Do not combine it with `celery_worker` in one test (tasks would go to the
  shared worker's queue).
A lease owner names the pool process that ran the step: `worker.owns(owner)` matches it.

The suite runs under pytest-xdist (`-n`, see pyproject.toml). Each xdist worker is a separate
pytest process with its own everything: its own temporary folder (so its own filesystem broker
and SQLite test database; pytest-django suffixes a PostgreSQL test database per xdist worker),
its own Celery queues (so on a shared Redis its worker processes never take another xdist
worker's tasks), and simulators on ports the kernel picks. The xdist controller runs no tests and
configures none of this: its environment is inherited by the xdist workers it starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent
# "gw0", "gw1", ... under pytest-xdist (set before this file is imported); "main" without it.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# This checkout, in the names of what the suite shares with other checkouts' runs on this machine
# (Redis queues, PostgreSQL test databases), so that concurrent runs keep out of each other's way.
CHECKOUT = hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]
_TMP = Path(tempfile.mkdtemp(prefix=f"portal-tests-{XDIST_WORKER}-"))
TEST_ENV = {
    # Short leases so a killed worker's step is picked up in seconds, not half a minute.
    "STEP_LEASE_SECONDS": "4",
    "WATCHDOG_INTERVAL_SECONDS": "1",
    "ATLAS_DEV_PASSWORD": "dev-secret-Zq7",
    "ATLAS_TEST_PASSWORD": "test-secret-Zq7",
    "ATLAS_PROD_PASSWORD": "prod-secret-Zq7",
}


def _xdist_controller(config) -> bool:
    """Whether this process hands the tests out to xdist workers (and runs none itself)."""
    return getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")


def pytest_configure(config):
    if _xdist_controller(config):
        url = os.environ.get("CELERY_BROKER_URL")
        config._portal_broker = "per xdist worker: " + (
            "an embedded filesystem broker each" if url is None else "its own queues on CELERY_BROKER_URL"
        )
        return
    from django.conf import settings

    from portal import celery_app
    from portal.settings import _broker_settings

    os.environ.setdefault("CELERY_BROKER_URL", f"filesystem://{_TMP / 'broker'}")
    for key, value in TEST_ENV.items():
        os.environ[key] = value
    settings.STEP_LEASE_SECONDS = float(TEST_ENV["STEP_LEASE_SECONDS"])
    url, options, description = _broker_settings(os.environ["CELERY_BROKER_URL"])
    settings.CELERY_BROKER_URL, settings.CELERY_BROKER_TRANSPORT_OPTIONS = url, options
    # This process's queues: the worker processes it starts inherit CELERY_QUEUE.
    os.environ["CELERY_QUEUE"] = settings.CELERY_TASK_DEFAULT_QUEUE = DEFAULT_QUEUE
    celery_app.conf.update(broker_url=url, broker_transport_options=options, task_default_queue=DEFAULT_QUEUE)
    config._portal_broker = description
    if url.startswith(("redis://", "rediss://")):
        # A Redis database outlives the run: tasks a previous run left queued would name step
        # ids that this run's fresh test database hands out again.
        with celery_app.connection_for_write() as connection:
            for queue in (DEFAULT_QUEUE, SHARED_QUEUE):
                connection.default_channel.queue_purge(queue)


def pytest_collection_modifyitems(config, items):
    """Under xdist: the long scenarios (`slow`) first, so that they start at once on the xdist
    workers and the short tests fill in around them, instead of one of them starting last and
    running alone at the end. Without xdist the order is the files' order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


def pytest_report_header(config):
    from django.conf import settings

    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return f"portal: database {db}, broker {getattr(config, '_portal_broker', '?')}"


def pytest_unconfigure(config):
    for worker in _STARTED:  # after an interrupted run, too: no worker outlives the suite
        if worker.alive():
            worker.stop(graceful=False)
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):
    """SQLite: a file test database (not in memory), so worker processes share it. PostgreSQL:
    a test database of this checkout and xdist worker (`test_test_1a2b3c4d_gw0`), not the
    `test_test_gw0` that a run in another checkout on the same server would create, drop and
    terminate sessions on too."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(_TMP / "test.sqlite3")
    elif db["ENGINE"].endswith("postgresql"):
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_{CHECKOUT}_{XDIST_WORKER}"


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


# The queues of this pytest process: of this checkout and this xdist worker, so that neither other
# xdist workers of the run nor a run in another checkout on the same Redis take its tasks.
DEFAULT_QUEUE = f"portal-tests-{CHECKOUT}-{XDIST_WORKER}"
SHARED_QUEUE = f"{DEFAULT_QUEUE}-shared"
_STARTED: list[WorkerProcess] = []
_TASK_RECEIVED = re.compile(r"Task \S+\[([0-9a-f-]+)\] received")
_TASK_ENDED = re.compile(r"Task \S+\[([0-9a-f-]+)\] (?:succeeded|raised|failed|retry)")


def process_environment(**overrides: str) -> dict:
    """The environment of a portal process (manage.py, the worker) on the test database."""
    return {**os.environ, "DATABASE_URL": _database_url(), "PYTHONUNBUFFERED": "1", **overrides}


@pytest.fixture
def process_env(transactional_db):
    """`process_env(CELERY_BROKER_URL=...)`: the environment for a `manage.py` subprocess."""
    return process_environment


class WorkerProcess:
    """A real worker process, started with the worker command (`python -m portal.worker`) on the
    test database and broker, in its own process group so its prefork children go with it."""

    def __init__(self, name: str, concurrency: int = 3, env: dict | None = None) -> None:
        self.name = f"{name}-{uuid.uuid4().hex[:6]}@localhost"
        env = process_environment(**(env or {}))
        self.log = _TMP / f"{self.name}.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "portal.worker", f"--concurrency={concurrency}", "-n", self.name,
             "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        _STARTED.append(self)
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def owns(self, owner: str) -> bool:
        """Whether a step lease owner (`host:pid:task`) is this worker or one of its pool
        processes (prefork runs tasks in children)."""
        pid = int(owner.split(":")[1])
        try:
            return pid == self.pid or psutil.Process(pid).ppid() == self.pid
        except psutil.NoSuchProcess:
            return False

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._signal_group(signal.SIGKILL)
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            if "ready." in self.log.read_text():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the whole group: the worker and its pool children die mid-task,
        acknowledging nothing."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)

    def freeze(self) -> None:
        """Stop the group (SIGSTOP): it consumes nothing and its watchdog looks at nothing."""
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_group(signal.SIGCONT)

    def idle(self, timeout: float) -> bool:
        """Wait until every task the worker received has ended (judged from its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.output()
            if set(_TASK_RECEIVED.findall(log)) <= set(_TASK_ENDED.findall(log)):
                return True
            time.sleep(0.2)
        return False

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM (a warm shutdown that waits for running tasks), then SIGKILL to the group.
        Teardown is not graceful: the test is over, and its database rows are about to go."""
        self.thaw()
        if graceful and self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # the pool children too, and a worker still running
        self.process.wait(timeout=10)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start_worker(transactional_db):
    """Start this test's own worker processes (stopped at teardown): `start_worker("name")`.
    For tests that kill, stop or reconfigure a worker; others use the shared `celery_worker`."""
    workers: list[WorkerProcess] = []

    def start(name: str = "worker", concurrency: int = 3, env: dict | None = None) -> WorkerProcess:
        worker = WorkerProcess(name, concurrency, env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(graceful=False)


class SharedWorker:
    """One worker for the session, on its own queue. Frozen (SIGSTOP) between the tests that use
    it, so it never takes another test's tasks nor re-enqueues another test's steps."""

    def __init__(self) -> None:
        self.worker: WorkerProcess | None = None

    def acquire(self) -> WorkerProcess:
        if self.worker is not None:
            self.worker.thaw()
            if not self.worker.alive():
                self.release(restart=True)
        if self.worker is None:
            self.worker = WorkerProcess("shared", env={"CELERY_QUEUE": SHARED_QUEUE})
        return self.worker

    def release(self, restart: bool = False) -> None:
        worker = self.worker
        if worker is None:
            return
        if restart or not worker.alive() or not worker.idle(timeout=20):
            # Still busy with the last test's step: the next test gets a fresh worker.
            worker.stop(graceful=False)
            self.worker = None
        else:
            worker.freeze()


def _end_other_sessions(wait: float = 5) -> None:
    """PostgreSQL: before the test database is dropped, wait for the sessions of killed worker
    processes to end, then end any left (a connection some thread of this process never closed),
    so that the drop does not fail with "database ... is being accessed by other users" and leave
    the database behind."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"

    def gone(cursor) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            cursor.execute(f"SELECT count(*) {others}")
            if cursor.fetchone()[0] == 0:
                return True
            time.sleep(0.1)
        return False

    with connection.cursor() as cursor:
        if not gone(cursor):
            cursor.execute(f"SELECT pg_terminate_backend(pid) {others}")
            gone(cursor)
    connection.close()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's; at its teardown, before the test database is dropped, no other session
    is left on it."""
    yield
    with django_db_blocker.unblock():
        _end_other_sessions()


@pytest.fixture(scope="session")
def _shared_worker(django_db_setup, django_db_blocker):
    shared = SharedWorker()
    yield shared
    shared.release(restart=True)


@pytest.fixture
def celery_worker(transactional_db, _shared_worker):
    """The session's shared worker process; this test's tasks go to its queue."""
    from portal import celery_app

    worker = _shared_worker.acquire()
    default_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = SHARED_QUEUE
    try:
        yield worker
    finally:
        celery_app.conf.task_default_queue = default_queue
        _shared_worker.release()
