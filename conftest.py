"""Test infrastructure shared by the whole suite: an isolated broker, a file-backed test database
that worker processes can open, and real Celery worker processes.

Without CELERY_BROKER_URL the suite uses the embedded filesystem broker in a temporary folder;
CI sets a Redis URL (and DATABASE_URL for PostgreSQL) and the same fixtures run against those.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
_TMP = Path(tempfile.mkdtemp(prefix="portal-tests-"))
TEST_ENV = {
    # Short leases so a killed worker's step is picked up in seconds, not half a minute.
    "STEP_LEASE_SECONDS": "4",
    "WATCHDOG_INTERVAL_SECONDS": "1",
    "ATLAS_DEV_PASSWORD": "dev-secret-Zq7",
    "ATLAS_TEST_PASSWORD": "test-secret-Zq7",
    "ATLAS_PROD_PASSWORD": "prod-secret-Zq7",
}


def pytest_configure(config):
    from django.conf import settings

    from portal import celery_app
    from portal.settings import _broker_settings

    os.environ.setdefault("CELERY_BROKER_URL", f"filesystem://{_TMP / 'broker'}")
    for key, value in TEST_ENV.items():
        os.environ[key] = value
    settings.STEP_LEASE_SECONDS = float(TEST_ENV["STEP_LEASE_SECONDS"])
    url, options, description = _broker_settings(os.environ["CELERY_BROKER_URL"])
    settings.CELERY_BROKER_URL, settings.CELERY_BROKER_TRANSPORT_OPTIONS = url, options
    celery_app.conf.update(broker_url=url, broker_transport_options=options)
    config._portal_broker = description


def pytest_report_header(config):
    from django.conf import settings

    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return f"portal: database {db}, broker {getattr(config, '_portal_broker', '?')}"


def pytest_unconfigure(config):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):
    """SQLite: a file test database (not in memory), so worker processes share it."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(_TMP / "test.sqlite3")


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class WorkerProcess:
    """A real `celery -A portal worker` process on the test database and broker."""

    def __init__(self, name: str, concurrency: int = 3) -> None:
        self.name = f"{name}-{uuid.uuid4().hex[:6]}@localhost"
        env = {**os.environ, "DATABASE_URL": _database_url(), "PYTHONUNBUFFERED": "1"}
        self.log = _TMP / f"{self.name}.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=threads",
             f"--concurrency={concurrency}", "-n", self.name, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            if "ready." in self.log.read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-task, acknowledging nothing."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start_worker(transactional_db):
    """Start real worker processes (stopped at teardown): `start_worker("name")`."""
    workers: list[WorkerProcess] = []

    def start(name: str = "worker", concurrency: int = 3) -> WorkerProcess:
        worker = WorkerProcess(name, concurrency)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_worker(start_worker):
    return start_worker()
