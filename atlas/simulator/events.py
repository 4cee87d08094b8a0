"""The simulator's record of Atlas's side effects, the things Atlas only reports to Slack.

Tests read it to prove what happened behind the API: which sites received a `site_update`,
which instances were destroyed by `site_remove`, which code items were deployed or demoted.
"""

import threading
import time
from collections.abc import Iterator
from typing import Any

# Kinds of events, one per Atlas side effect.
SITE_UPDATE = "site_update"  # a PATCH of a site carrying `code` (queues Atlas's site_update task)
SITE_REMOVE = "site_remove"  # a DELETE of a site passed the launched check: the instance is gone
CASCADE = "cascade"  # a code PATCH re-PATCHed this site with the same reference
CASCADE_END = "cascade_end"  # the code PATCH's cascade reached its last site (id: the code item)
CODE_DEPLOY = "code_deploy"  # POST /code queued a clone/checkout
CODE_UPDATE = "code_update"  # PATCH /code queued a re-checkout
DEMOTE = "demote"  # a current code item was made non-current by another becoming current
POOL_REFILL = "pool_refill"  # a new pool site was created
PROVISION = "provision"  # a pending site became available
TRANSITION = "transition"  # an Atlas task finished a status change (installing -> installed, …)
TOUCH = "touch"  # an Atlas task wrote to a site (bumps its _etag)
POOL_TAKE = "pool_take"  # an install or restore took an available site from the pool
AUTH_FAILED = "auth_failed"  # a request whose Basic credentials Atlas refused (an LDAP bind each)
# Atlas's update_queue (id: the site). Every queued update ends with one update_finished.
UPDATE_QUEUED = "update_queued"  # a PATCH carrying `code` queued a site_update (profile, source)
UPDATE_STARTED = "update_started"  # a worker took it: the profile symlink now points at the new code
UPDATE_FINISHED = "update_finished"  # updb and cache clear done (broken, pending, superseded, skipped)
# Drush (id: the drush item, then the site) and what the sites themselves do.
DRUSH_EXECUTE = "drush_execute"  # POST /drush/<id>/execute was accepted (drush_prepare queued)
DRUSH_PREPARE = "drush_prepare"  # drush_prepare read the item's query: `matched` sites, or `error`
DRUSH_RUN = "drush_run"  # the commands ran on one site (`ok`: the site could bootstrap)
STATISTICS_REPORT = "statistics_report"  # a site wrote its statistics item (version, error, source)
PAGE_GET = "page_get"  # a GET of a site's page (path, status; id: the site, or "" for none)
STATISTICS_READ = "statistics_read"  # a GET of `statistics` answered (`sites`: whose items it returned)


class EventLog:
    """A thread-safe, append-only list of event dicts: `{"kind", "id", "at", ...}`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []

    def record(self, kind: str, id: Any, **details: Any) -> dict[str, Any]:
        event = {"kind": kind, "id": str(id), "at": time.time(), **details}
        with self._lock:
            self._events.append(event)
        return event

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.snapshot() if event["kind"] == kind]

    def ids(self, kind: str) -> list[str]:
        return [event["id"] for event in self.of_kind(kind)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with self._lock:
            return self._events[index]
