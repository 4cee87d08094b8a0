"""The worker command: `python -m portal.worker [celery worker options]`.

This is the one way the portal starts a Celery worker — in production (under systemd or any
supervisor that restarts it on exit), in `manage.py runportal`, in the tests and in the
benchmarks — so the pool that is tested is the pool that runs.

Defaults (each can be overridden by passing the option):
- `--pool=prefork --concurrency=3`: each step runs in its own child process, where Celery's
  soft and hard time limits are enforced by signals; three steps (one per environment) can run at
  once. A step's own parallelism is threads inside that child, bounded by the environment.
- `--without-gossip --without-mingle`: workers do not need each other's state (a step is held by a
  database lease, not by broker bookkeeping), and mingle costs a second at every start.
- `--loglevel=INFO`, `-n portal-<pid>@<host>` so several workers on one host have distinct names.

Any other `celery worker` option is passed through, e.g. `python -m portal.worker -c 6 -n w2@%h`.
"""

from __future__ import annotations

import os
import sys

DEFAULTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-P", "--pool"), "--pool=prefork"),
    (("-c", "--concurrency"), "--concurrency=3"),
    (("-l", "--loglevel"), "--loglevel=INFO"),
    (("-n", "--hostname"), "--hostname=portal-{pid}@%h"),
)
FLAGS = ("--without-gossip", "--without-mingle")


def worker_argv(args: list[str]) -> list[str]:
    """The `celery worker` arguments: the defaults, except where `args` gives the option."""

    def given(names: tuple[str, ...]) -> bool:
        return any(
            a == n or a.startswith(n + "=") or (len(n) == 2 and a.startswith(n)) for a in args for n in names
        )

    defaults = [value.format(pid=os.getpid()) for names, value in DEFAULTS if not given(names)]
    flags = [flag for flag in FLAGS if flag not in args]
    return ["worker", *defaults, *flags, *args]


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from portal.startup import configured_or_exit, database_answers_or_exit

    configured_or_exit()
    database_answers_or_exit()
    from django.core.management import call_command

    call_command("check", tags=["atlas"])  # prints the Atlas configuration warnings, if any
    from django.db import connections

    connections.close_all()  # opened by the checks; the pool's children open their own
    from portal.celery import app

    app.worker_main(worker_argv(sys.argv[1:] if args is None else args))


if __name__ == "__main__":
    main()
