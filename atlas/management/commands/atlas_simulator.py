"""`manage.py atlas_simulator`: serve one simulated Atlas until interrupted.

Needs no database: it never touches the ORM and skips the system checks.
"""

import os
import signal
import sys
import threading
from typing import Any

from django.core.management.base import CommandError, CommandParser

from atlas.simulator import ENVIRONMENTS, SimulatorServer
from atlas.simulator.server import SWITCH_INTERVAL_SECONDS
from portal import commands


class Command(commands.Command):
    help = "Serve a simulated Atlas (real Eve over mongomock) with a realistic population."
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=5000, help="TCP port on 127.0.0.1.")
        parser.add_argument("--environment", choices=ENVIRONMENTS, default="dev")
        parser.add_argument("--sites", type=int, default=None, help="Population size.")
        parser.add_argument("--seed", type=int, default=0, help="Population seed.")
        parser.add_argument("--latency-ms", type=float, default=0, help="Sleep before each write.")
        parser.add_argument("--fail-rate", type=float, default=0.0, help="Share of 503 answers.")
        parser.add_argument("--username", default="release-portal")
        parser.add_argument(
            "--password",
            default=None,
            help="Default: $ATLAS_<ENV>_PASSWORD, else 'secret'. Never printed.",
        )
        parser.add_argument("--prefix", default="", help="Serve under /PREFIX/ (e.g. atlas).")
        parser.add_argument(
            "--request-log",
            action="store_true",
            help="Record every request's arrival and answer times (Atlas's clock, for benchmarks) "
            "at /_simulator/requests (GET to read, DELETE to clear).",
        )
        parser.add_argument(
            "--pool-refill-delay", type=float, default=2.0, help="Seconds before the pool refills."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # this process is the simulator's own
        environment = options["environment"]
        password = options["password"]
        if password is None:
            password = os.environ.get(f"ATLAS_{environment.upper()}_PASSWORD") or "secret"
        try:
            server = SimulatorServer(
                environment,
                port=options["port"],
                sites=options["sites"],
                seed=options["seed"],
                username=options["username"],
                password=password,
                prefix=options["prefix"],
                pool_refill_delay=options["pool_refill_delay"],
                log_requests=options["verbosity"] > 1,
            )
        except OSError as error:
            raise CommandError(f"Cannot listen on port {options['port']}: {error}") from error
        server.set_faults(write_latency_ms=options["latency_ms"], fail_rate=options["fail_rate"])
        server.injector.record = options["request_log"]
        self._announce(server, options["username"])
        stopped = threading.Event()
        # Supervisors (runportal) stop simulators with SIGTERM: shut down as cleanly as on Ctrl-C.
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
        try:
            while not stopped.wait(timeout=1):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()

    def _announce(self, server: SimulatorServer, username: str) -> None:
        with server.lock:
            count = server.db["sites"].count_documents({})
        self.stdout.write(
            f"Atlas simulator ({server.environment}, {count} sites, seeded in "
            f"{server.seed_seconds:.2f} s) at {server.url} — writes as user {username!r}. "
            "Ctrl-C to stop.",
        )
        self.stdout.flush()
