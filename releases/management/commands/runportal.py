"""`manage.py runportal`: the portal with its embedded defaults, for a newcomer or a demo.

Starts three simulated Atlas environments, a Celery worker and the web server as child
processes, after migrating the database, loading the runbook and creating an admin account.
Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from releases import roles
from releases.models import Environment

ROOT = Path(settings.BASE_DIR)
# Short waits suit the simulators; real Atlas environments keep their own settings.
# They apply to environments created now; `environment set` changes them afterwards.
DEMO_TIMINGS = {
    "ATLAS_DEPLOY_WAIT_SECONDS": 3.0,
    "ATLAS_BATCH_PAUSE_SECONDS": 1.0,
    "ATLAS_POOL_WAIT_SECONDS": 60.0,
}


class Command(BaseCommand):
    help = "Run the portal with three simulated Atlas environments and a worker (Ctrl-C stops all)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where the web server listens.")
        parser.add_argument("--prod-sites", type=int, default=3000, help="Size of the simulated PROD.")
        parser.add_argument("--no-simulators", action="store_true", help="Use the configured Atlas URLs.")

    def handle(self, *args, addr, prod_sites, no_simulators, **options):
        for name in ("DEV", "TEST", "PROD"):
            os.environ.setdefault(f"ATLAS_{name}_PASSWORD", f"{name.lower()}-simulator")
        for key, value in DEMO_TIMINGS.items():
            if key not in os.environ and not no_simulators:
                setattr(settings, key, value)
        call_command("migrate", verbosity=0)
        call_command("loadrunbook", verbosity=0)
        self._ensure_admin()
        if not no_simulators:  # demo accounts, one per role (releases/roles.py), for the simulators only
            password = os.environ.get("PORTAL_DEMO_PASSWORD", "demo")
            for username, role in roles.ensure_demo_accounts(password):
                self.stdout.write(f"Demo account {username!r} ({role}), password {password!r}")
        children = []
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            if not no_simulators:
                children += self._start_simulators(prod_sites)
            children.append(self._spawn("worker", "-m", "portal.worker"))
            children.append(self._spawn("web", "manage.py", "runserver", addr, "--noreload"))
            self._wait_until_ready(addr, children)
            self.stdout.write(
                self.style.SUCCESS(
                    f"Portal at http://{addr}/admin/ — user 'admin', password from PORTAL_ADMIN_PASSWORD "
                    f"(default 'admin'). Broker: {settings.CELERY_BROKER_DESCRIPTION}. Ctrl-C stops everything."
                )
            )
            self._supervise(children)
        except KeyboardInterrupt:
            pass
        finally:
            self._stop(children)

    def _ensure_admin(self) -> None:
        users = get_user_model().objects
        if not users.filter(username="admin").exists():
            users.create_superuser("admin", "", os.environ.get("PORTAL_ADMIN_PASSWORD", "admin"))

    def _start_simulators(self, prod_sites: int) -> list[subprocess.Popen]:
        children = []
        for env in Environment.objects.filter(name__in=["DEV", "TEST", "PROD"]):
            port = _local_port(env.api_url)
            if port is None:
                self.stdout.write(f"{env.name} points at {env.api_url}: not starting a simulator for it")
                continue
            args = [
                "manage.py",
                "atlas_simulator",
                "--port",
                str(port),
                "--environment",
                env.name.lower(),
                "--username",
                env.username,
            ]
            if env.name == "PROD":
                args += ["--sites", str(prod_sites)]
            children.append(self._spawn(f"atlas-{env.name.lower()}", *args))
        return children

    def _spawn(self, label: str, *args: str) -> subprocess.Popen:
        self.stdout.write(f"starting {label}")
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, start_new_session=True)

    def _wait_until_ready(self, addr: str, children: list[subprocess.Popen], timeout: float = 60) -> None:
        """Until the web process answers /healthz (its database and broker answer too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(children)
            try:
                with urlopen(f"http://{addr}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise CommandError(f"the web process did not answer http://{addr}/healthz within {timeout:.0f}s")

    def _check_alive(self, children: list[subprocess.Popen]) -> None:
        for child in children:
            if child.poll() is not None:
                raise CommandError(f"{' '.join(child.args[1:4])} exited with {child.returncode}")

    def _supervise(self, children: list[subprocess.Popen]) -> None:
        while True:
            self._check_alive(children)
            time.sleep(1)

    def _stop(self, children: list[subprocess.Popen]) -> None:
        for child in children:
            if child.poll() is None:
                # The process itself, not its group: the worker stops its pool children cleanly.
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(child.pid, signal.SIGKILL)  # whatever is left of its group
            except ProcessLookupError:
                pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _local_port(url: str) -> int | None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.port if parts.hostname in ("127.0.0.1", "localhost") and parts.port else None
