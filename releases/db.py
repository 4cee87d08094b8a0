"""Database calls that survive a lost connection: the worker and `release --wait` keep going
through a restarted or failed-over PostgreSQL, a terminated backend or a busy SQLite file."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection
from django.db.models import Model
from django.db.models.constants import OnConflict

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


def insert_new(model: type[Model], rows: list[dict], **common: object) -> None:
    """INSERT `rows` (values by column attribute name, as the database takes them: str, int or
    None) with `common` and the model's defaults for every other column, skipping a row that
    would break a unique constraint: one `executemany`.

    `bulk_create` builds a model instance and compiles every field of every row; for a snapshot
    page of 2,000 sites that is most of the time between Atlas's answer and the first write. The
    constants and defaults are prepared once here, through the fields themselves.
    """
    if not rows:
        return
    fields = {f.attname: f for f in model._meta.concrete_fields if not f.primary_key}
    varying = list(rows[0])
    unknown = (set(varying) | set(common)) - set(fields)
    if unknown:
        raise ValueError(f"{model.__name__} has no column {sorted(unknown)}")
    constants = {
        name: field.get_db_prep_save(common[name] if name in common else field.get_default(), connection)
        for name, field in fields.items()
        if name not in varying
    }
    quote = connection.ops.quote_name
    columns = ", ".join(quote(fields[name].column) for name in [*varying, *constants])
    placeholders = ", ".join(["%s"] * (len(varying) + len(constants)))
    # As Django's own bulk_create(ignore_conflicts=True) says it: INSERT OR IGNORE on SQLite,
    # ON CONFLICT DO NOTHING on PostgreSQL.
    insert = connection.ops.insert_statement(on_conflict=OnConflict.IGNORE)
    ignore = connection.ops.on_conflict_suffix_sql(list(fields.values()), OnConflict.IGNORE, None, None)
    sql = f"{insert} {quote(model._meta.db_table)} ({columns}) VALUES ({placeholders}) {ignore}".strip()
    tail = tuple(constants.values())
    with connection.cursor() as cursor:
        cursor.executemany(sql, [tuple(row[name] for name in varying) + tail for row in rows])
