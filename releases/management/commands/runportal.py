"""`manage.py runportal`: the portal with its embedded defaults, for a newcomer or a demo.

Starts three simulated Atlas environments, a Celery worker and the web server as child
processes, after migrating the database, loading the runbook and creating the demo accounts.
Says it is ready only once the web process answers /healthz. Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from atlas.simulator.pages import PAGES_PATH
from portal import commands
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
# How long a simulated site update takes: long enough that a demo shows sites updating at Atlas,
# then verified (and PROD's canary waiting), short enough that a release still takes minutes.
DEMO_UPDATE_MS = 1500
# The simulators' passwords, unless ATLAS_<ENV>_PASSWORD is set (the README's command lines export
# the same values, so `manage.py release …` in another shell reaches the demo's simulators).
SIMULATOR_PASSWORDS = {name: f"{name.lower()}-simulator" for name in ("DEV", "TEST", "PROD")}
# The demo's accounts, one per role (releases/roles.py), all with one password: PORTAL_DEMO_PASSWORD
# or 'demo', set on the first run. username -> role.
DEMO_ACCOUNTS = dict(roles.DEMO_ACCOUNTS)
DEFAULT_PASSWORD = "demo"


class Command(commands.Command):
    help = "Run the portal with three simulated Atlas environments and a worker (Ctrl-C stops all)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where the web server listens.")
        parser.add_argument("--prod-sites", type=int, default=3000, help="Size of the simulated PROD.")
        parser.add_argument("--no-simulators", action="store_true", help="Use the configured Atlas URLs.")

    def handle(self, *args, addr, prod_sites, no_simulators, **options):
        for name, password in SIMULATOR_PASSWORDS.items():
            os.environ.setdefault(f"ATLAS_{name}_PASSWORD", password)
        for key, value in DEMO_TIMINGS.items():
            if key not in os.environ and not no_simulators:
                setattr(settings, key, value)
        if not no_simulators:
            _point_site_urls_at_simulators()
        call_command("migrate", verbosity=0)
        call_command("loadrunbook", verbosity=0)
        self._ensure_accounts()
        children, simulated = [], []
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            if not no_simulators:
                simulated = self._start_simulators(prod_sites)
                children += [child for child, _ in simulated]
            children.append(self._spawn("worker", "-m", "portal.worker"))
            children.append(self._spawn("web", "manage.py", "runserver", addr, "--noreload"))
            self._wait_until_ready(addr, children, [url for _, url in simulated])
            (ready, *rest) = ready_banner(addr, settings.CELERY_BROKER_DESCRIPTION)
            self.stdout.write(self.style.SUCCESS(ready))
            self.stdout.write("\n".join(rest))
            self._supervise(children)
        except KeyboardInterrupt:
            pass
        finally:
            self._stop(children)

    def _ensure_accounts(self) -> None:
        roles.ensure_demo_accounts(os.environ.get("PORTAL_DEMO_PASSWORD", DEFAULT_PASSWORD))

    def _start_simulators(self, prod_sites: int) -> list[tuple[subprocess.Popen, str]]:
        children = []
        for env in Environment.objects.filter(name__in=["DEV", "TEST", "PROD"]):
            port = _local_port(env.api_url)
            if port is None:
                self.stdout.write(f"{env.name} points at {env.api_url}: not starting a simulator for it")
                continue
            self._use_simulator_site_url(env, port)
            args = [
                "manage.py",
                "atlas_simulator",
                "--port",
                str(port),
                "--environment",
                env.name.lower(),
                "--username",
                env.username,
                "--update-ms",
                str(DEMO_UPDATE_MS),
            ]
            if env.name == "PROD":
                args += ["--sites", str(prod_sites)]
            children.append((self._spawn(f"atlas-{env.name.lower()}", *args), env.api_url))
        return children

    def _use_simulator_site_url(self, env: Environment, port: int) -> None:
        """A row created by an earlier run keeps the placeholder site URL (example.edu, which
        answers nothing): point it at its simulator's pages. A URL an operator set is kept."""
        wanted = simulator_site_url(port)
        if env.site_url == wanted or (env.site_url and not _placeholder(env.site_url)):
            return
        Environment.objects.filter(pk=env.pk).update(site_url=wanted)
        self.stdout.write(f"{env.name}: site URL {wanted} (its simulator's pages)")

    def _spawn(self, label: str, *args: str) -> subprocess.Popen:
        self.stdout.write(f"starting {label}")
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, start_new_session=True)

    def _wait_until_ready(
        self, addr: str, children: list[subprocess.Popen], simulators: list[str], timeout: float = 90
    ) -> None:
        """Until every simulator answers, the web process answers /healthz (its database and
        broker answer too) and a worker answers a ping: before that, a launched step would fail
        to reach Atlas or only wait in the queue."""
        waiting = [*simulators, f"http://{addr}/healthz", "a worker"]
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            self._check_alive(children)
            answered = _worker_answers() if waiting[0] == "a worker" else _answers(waiting[0])
            if answered:
                waiting.pop(0)
            else:
                time.sleep(0.5)
        if waiting:
            raise CommandError(f"{waiting[0]} did not answer within {timeout:.0f}s")

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


def ready_banner(addr: str, broker: str) -> list[str]:
    """What `runportal` prints once the portal answers: the ready line first, then every account
    (the README's role table), the broker last."""
    password = (
        "the password in PORTAL_DEMO_PASSWORD"
        if os.environ.get("PORTAL_DEMO_PASSWORD")
        else f"password '{DEFAULT_PASSWORD}'"
    )
    lines = [
        f"Ready: the portal answers at http://{addr}/admin/ (Ctrl-C stops everything)",
        f"  Log in with one of these accounts, {password} (set on the first run):",
    ]
    for name, role in DEMO_ACCOUNTS.items():
        what = roles.DEMO_NOTES.get(name) or roles.DESCRIPTIONS[role]
        lines.append(f"    {name:<16} {roles.ROLE_NAMES[role]}: {what}")
    lines += [
        f"  Broker: {broker}",
        '  Command line: see the README, "Releasing from the command line"',
    ]
    return lines


def _answers(url: str) -> bool:
    """Whether `url` answers 200 (/healthz), or at all (a simulator: any HTTP status)."""
    try:
        with urlopen(url, timeout=2) as response:
            return response.status == 200 or not url.endswith("/healthz")
    except HTTPError:
        return not url.endswith("/healthz")
    except OSError:
        return False


def _worker_answers() -> bool:
    from portal import celery_app

    try:
        return bool(celery_app.control.ping(timeout=1))
    except Exception:  # the broker is still starting: ask again
        return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def simulator_site_url(port: int) -> str:
    """Where a simulator on `port` serves its sites' pages (`SimulatorServer.site_url`)."""
    return f"http://127.0.0.1:{port}{PAGES_PATH}"


def _point_site_urls_at_simulators() -> None:
    """Environments created now get their simulator's site URL, unless ATLAS_<ENV>_SITE_URL says
    otherwise (the settings' default is a placeholder that answers nothing)."""
    for name, defaults in settings.ATLAS_DEFAULTS.items():
        port = _local_port(defaults["url"])
        if port is not None and f"ATLAS_{name}_SITE_URL" not in os.environ:
            defaults["site_url"] = simulator_site_url(port)


def _placeholder(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "").endswith(".example.edu")


def _local_port(url: str) -> int | None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.port if parts.hostname in ("127.0.0.1", "localhost") and parts.port else None
