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
        _add_server(parser)
        _add_queues(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # this process is the simulator's own
        environment = options["environment"]
        self._check_numbers(options)
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
                update_workers=options["update_workers"],
                update_ms=options["update_ms"],
                broken_rate=options["broken_rate"],
                command_workers=options["command_workers"],
                command_ms=options["command_ms"],
                cron_seconds=options["cron_seconds"],
                drush_denied=[options["username"]] if options["no_drush_role"] else [],
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

    def _check_numbers(self, options: dict) -> None:
        for name in ("update_workers", "command_workers"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("update_ms", "command_ms", "cron_seconds"):
            if options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must not be negative")
        if not 0 <= options["broken_rate"] <= 1:
            raise CommandError("--broken-rate must be between 0 and 1")

    def _announce(self, server: SimulatorServer, username: str) -> None:
        with server.lock:
            count = server.db["sites"].count_documents({})
        settings = server.state.drupal.settings
        self.stdout.write(
            f"Atlas simulator ({server.environment}, {count} sites, seeded in "
            f"{server.seed_seconds:.2f} s) at {server.url} — writes as user {username!r}; "
            f"the sites' pages at {server.site_url}; {settings.update_workers} update workers, "
            f"{settings.update_ms:g} ms per site update. Ctrl-C to stop.",
        )
        self.stdout.flush()


def _add_server(parser: CommandParser) -> None:
    """Where the simulator listens, whom it lets in, its population and its write faults."""
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


def _add_queues(parser: CommandParser) -> None:
    """Atlas's own work queues: the pool refill, site updates, drush runs and cron reports."""
    parser.add_argument(
        "--pool-refill-delay", type=float, default=2.0, help="Seconds before the pool refills."
    )
    _add_queue(parser, "update", "Site updates Atlas runs at once (update_queue).", 1500,
               "Milliseconds one site update takes.")  # fmt: skip
    text = "Share of site updates onto new code that break their site (its page answers 500)."
    parser.add_argument("--broken-rate", type=float, default=0.0, help=text)
    _add_queue(parser, "command", "Drush runs Atlas runs at once (command_queue).", 100,
               "Milliseconds one drush run on one site takes.")  # fmt: skip
    text = "Every site reports its statistics once per this many seconds (0: no cron reports)."
    parser.add_argument("--cron-seconds", type=float, default=0.0, help=text)
    parser.add_argument(
        "--no-drush-role",
        action="store_true",
        help="The --username account lacks the drush role: POST /drush/<id>/execute answers 403.",
    )


def _add_queue(parser: CommandParser, queue: str, workers_help: str, ms: float, ms_help: str) -> None:
    parser.add_argument(f"--{queue}-workers", type=int, default=4, help=workers_help)
    parser.add_argument(f"--{queue}-ms", type=float, default=ms, help=ms_help)
