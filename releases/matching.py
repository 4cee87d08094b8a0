"""How many sites each update group's selector matches now, read from Atlas.

The counts are read on a small thread pool with a bounded wait and cached briefly: a page that
shows them answers within `WAIT_SECONDS` whatever Atlas does, showing "unknown" for what has not
arrived (a slow answer still lands in the cache for the next page load). Failures are cached for a
shorter time, so an unreachable Atlas is not asked again on every page load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

from django.core.cache import cache

from atlas.client import AtlasClient
from atlas.errors import AtlasError

from .models import EnvironmentMisconfigured, UpdateGroup

logger = logging.getLogger(__name__)

CACHE_SECONDS = 60  # a count is "now" for a minute
FAILURE_CACHE_SECONDS = 15
WAIT_SECONDS = 1.0  # the most a page waits for all of its counts together
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 5.0
UNKNOWN = -1  # cached for a failed read (the cache cannot tell a stored None from a miss)

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="matching-sites")
_inflight: dict[str, Future] = {}
_lock = threading.Lock()


def cache_key(group: UpdateGroup) -> str:
    env = group.environment
    source = json.dumps([env.api_url, env.username, group.selector()], sort_keys=True, default=str)
    return f"releases:matching:{env.pk}:{hashlib.sha256(source.encode()).hexdigest()[:32]}"


def matching_counts(groups: list[UpdateGroup], wait_seconds: float = WAIT_SECONDS) -> dict[int, int | None]:
    """{group id: sites its selector matches in Atlas now, or None when unknown}."""
    keys = {group.pk: cache_key(group) for group in groups}
    cached = cache.get_many(set(keys.values()))
    counts: dict[int, int | None] = {}
    pending: dict[int, Future] = {}
    passwords: dict[int, str | None] = {}
    for group in groups:
        key = keys[group.pk]
        if key in cached:
            counts[group.pk] = None if cached[key] == UNKNOWN else cached[key]
            continue
        env = group.environment
        if env.pk not in passwords:
            try:
                passwords[env.pk] = env.password()  # read here: the pool's threads use no database
            except EnvironmentMisconfigured:
                passwords[env.pk] = None
        if passwords[env.pk] is None:
            counts[group.pk] = None
            continue
        pending[group.pk] = _start(key, group, passwords[env.pk])
    if pending:
        done, _ = wait(set(pending.values()), timeout=wait_seconds)
        for pk, future in pending.items():
            counts[pk] = future.result() if future in done else None
    return counts


def _start(key: str, group: UpdateGroup, password: str) -> Future:
    env = group.environment
    target = dict(base_url=env.api_url, username=env.username, environment=env.name, verify=env.verify_tls)
    with _lock:
        future = _inflight.get(key)
        if future is not None:
            return future
        future = _inflight[key] = _pool.submit(_count, key, target, password, group.selector())
    # Outside the lock: a future already done runs the callback at once, here.
    future.add_done_callback(lambda _f, key=key: _forget(key))
    return future


def _forget(key: str) -> None:
    with _lock:
        _inflight.pop(key, None)


def _count(key: str, target: dict, password: str, selector: dict) -> int | None:
    client = AtlasClient(
        target.pop("base_url"),
        password=password,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_attempts=1,
        **target,
    )
    try:
        count = client.count("sites", selector)
    except (AtlasError, OSError, ValueError) as exc:  # a count on a page: never an error page
        logger.info("matching sites on %s: %s", client.safe_base_url, type(exc).__name__)
        cache.set(key, UNKNOWN, FAILURE_CACHE_SECONDS)
        return None
    finally:
        client.close()
    cache.set(key, count, CACHE_SECONDS)
    return count
