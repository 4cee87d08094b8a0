"""Database calls that survive a lost connection: the worker and `release --wait` keep going
through a restarted or failed-over PostgreSQL, a terminated backend or a busy SQLite file."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)
T = TypeVar("T")
DB_ATTEMPTS = 6


def with_database(operation: Callable[[], T], what: str = "database") -> T:
    """Run a database operation, reconnecting after a lost connection (a restarted or failed-over
    PostgreSQL, a terminated backend) or a locked SQLite file, a bounded number of times."""
    for attempt in range(1, DB_ATTEMPTS + 1):
        try:
            return operation()
        except (OperationalError, InterfaceError) as exc:
            if attempt == DB_ATTEMPTS or connection.in_atomic_block:
                raise
            logger.warning("%s: %s; reconnecting (attempt %d)", what, str(exc).strip()[:200], attempt + 1)
            connection.close()
            time.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


class QueryCounter:
    """Counts the database queries of every thread it is installed in
    (`with connection.execute_wrapper(counter)`): what a step costs the database."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        with self._lock:
            self.count += 1
        return execute(sql, params, many, context)
