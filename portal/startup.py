"""Start-up guards shared by `manage.py`, the worker and the WSGI entry point.

A configuration mistake (no SECRET_KEY with DEBUG off, a malformed DATABASE_URL, no broker) or a
database that does not answer ends the process with one line on stderr and exit status 2 — an
operator reads the cause, not a traceback. `--traceback` on the command line shows the traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
EXIT_CONFIGURATION = 2


def fail(message: str) -> None:
    """Print `message` as the one line an operator sees, and exit."""
    first = " ".join(str(message).split())  # one line, whatever the exception carried
    print(f"portal: {first}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIGURATION)


def _show_traceback() -> bool:
    return "--traceback" in sys.argv


def configured_or_exit() -> None:
    """Load the settings and set Django up, or exit with the one-line reason."""
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as exc:
        if _show_traceback():
            raise
        fail(f"configuration error: {exc}")


def database_answers_or_exit() -> None:
    """Exit with one line when the default database does not answer (a worker without its
    database can only fail every task)."""
    from django.db import connection

    guarded(connection.ensure_connection)
    connection.close()


def guarded(call: Callable[[], T]) -> T:
    """Run `call`; a database that does not answer becomes the one-line exit."""
    from django.db import InterfaceError, OperationalError, connection

    try:
        return call()
    except (OperationalError, InterfaceError) as exc:
        if _show_traceback():
            raise
        fail(f"database {describe_database(connection.settings_dict)}: {_first_line(exc)}")
    raise AssertionError("unreachable")  # pragma: no cover - fail() exits


def describe_database(db: dict) -> str:
    """Engine, host, port and name: never the user's password."""
    engine = db.get("ENGINE", "").rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite3 {db.get('NAME')}"
    return f"{engine} {db.get('HOST') or 'localhost'}:{db.get('PORT') or '-'}/{db.get('NAME')}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
