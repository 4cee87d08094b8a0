"""Health of the portal's two dependencies, the database and the broker: `/healthz` for a load
balancer or a monitor, and the start-up system check of the broker.

The answer names no host, user or URL (the endpoint needs no login); the reason goes to the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 2.0


def database_problem() -> str:
    """'' when the default database answers a query, else why not."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "not healthy"; the reason is logged, not shown
        return _first_line(exc)
    return ""


def broker_problem() -> str:
    """'' when the broker answers, else why not (a PING to Redis; the embedded broker's folder)."""
    url = settings.CELERY_BROKER_URL
    scheme = urlsplit(url).scheme
    try:
        if scheme in {"redis", "rediss"}:
            import redis

            client = redis.Redis.from_url(
                url, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
            )
            try:
                client.ping()
            finally:
                client.close()
        elif scheme == "filesystem":
            folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
            if not os.access(folder, os.W_OK):
                return f"the embedded broker's folder {folder} is not writable"
    except Exception as exc:
        return _first_line(exc)
    return ""


@never_cache
@require_GET
def healthz(request):
    """200 with {"status": "ok", ...} when the database and the broker answer, else 503."""
    checks = {}
    for name, probe in (("database", database_problem), ("broker", broker_problem)):
        problem = probe()
        checks[name] = "ok" if not problem else "unavailable"
        if problem:
            logger.warning("healthz: %s unavailable: %s", name, problem)
    healthy = all(state == "ok" for state in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
