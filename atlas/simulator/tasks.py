"""Atlas's background work (its Celery tasks), reduced to what the API can observe.

- `available_sites_check`: after deletions, new `pending` sites fill the pool up to its size.
- `site_provision`: a `pending` site becomes `available`.
- status tasks: `installing` → `installed`, `launching` → `launched` (new `update_group`),
  `take_down` → `down`, `restore` → `installed`.

Work runs `delay` seconds after the request that asked for it, on a timer thread that takes the
simulator's lock like any request; with `delay == 0` it runs right after that request, before
its response is sent.
"""

import random
import threading
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from bson import ObjectId
from eve.methods.patch import patch_internal
from eve.methods.post import post_internal
from flask import Flask

from . import events as ev

# Status an Atlas task moves a site to once it has finished the work the status asks for.
TASK_OUTCOME = {
    "installing": "installed",
    "launching": "launched",
    "take_down": "down",
    "restore": "installed",
}
POOL_STATUSES = ["pending", "available"]


@dataclass(eq=False)
class AtlasTasks:
    app: Flask
    lock: threading.RLock
    log: ev.EventLog
    rng: random.Random
    _: KW_ONLY
    delay: float
    pool_size: int = field(default=0, init=False)
    _refill_wanted: bool = field(default=False, init=False)
    _provision_wanted: bool = field(default=False, init=False)
    _transitions: list[tuple[ObjectId, str]] = field(default_factory=list, init=False)
    _timer: threading.Timer | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)

    # -- requests for work (called from Eve hooks, under the lock) --------------------------

    def request_refill(self) -> None:
        self._refill_wanted = True

    def request_provision(self) -> None:
        self._provision_wanted = True

    def request_transition(self, site_id: ObjectId, status: str) -> None:
        self._transitions.append((site_id, status))

    @property
    def has_work(self) -> bool:
        return self._refill_wanted or self._provision_wanted or bool(self._transitions)

    # -- scheduling ----------------------------------------------------------------------

    def after_request(self) -> None:
        """Called under the lock once a request has been handled."""
        if not self.has_work or self._stopped:
            return
        if self.delay <= 0:
            self.run_now()
        elif self._timer is None:
            self._timer = threading.Timer(self.delay, self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def _on_timer(self) -> None:
        with self.lock:
            self._timer = None
            if not self._stopped:
                self.run_now()

    def stop(self) -> None:
        with self.lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def run_now(self) -> None:
        """Run all pending work (the caller holds the lock)."""
        with self.app.test_request_context("/"):
            # A refill inserts pending sites, which provisioning then makes available.
            while self.has_work:
                if self._refill_wanted:
                    self._refill_wanted = False
                    self._refill_pool()
                if self._provision_wanted:
                    self._provision_wanted = False
                    self._provision_pending()
                transitions, self._transitions = self._transitions, []
                for site_id, status in transitions:
                    self._finish_transition(site_id, status)

    # -- the tasks -----------------------------------------------------------------------

    def _sites(self) -> Any:
        return self.app.data.database["sites"]

    def _refill_pool(self) -> None:
        in_pool = self._sites().count_documents({"status": {"$in": POOL_STATUSES}, "_deleted": {"$ne": True}})
        missing = self.pool_size - in_pool
        if missing <= 0:
            return
        # Like Atlas's available_sites_check: POST {"status": "pending"}; the insert hook adds
        # sid, path, update_group and the current core and profile.
        response, *_ = post_internal("sites", [{"status": "pending"} for _ in range(missing)])
        created = response.get("_items", [response])
        for item in created:
            self.log.record(ev.POOL_REFILL, item["_id"])

    def _provision_pending(self) -> None:
        pending = self._sites().find({"status": "pending", "_deleted": {"$ne": True}}, {"_id": 1})
        for site in list(pending):
            patch_internal("sites", {"status": "available"}, concurrency_check=False, _id=site["_id"])
            self.log.record(ev.PROVISION, site["_id"])

    def _finish_transition(self, site_id: ObjectId, status: str) -> None:
        site = self._sites().find_one({"_id": site_id, "_deleted": {"$ne": True}})
        if site is None or site.get("status") != status:
            return  # someone moved it on meanwhile
        updates: dict[str, Any] = {"status": TASK_OUTCOME[status]}
        if status == "launching":
            updates["update_group"] = 6 if site.get("path") == "homepage" else self.rng.randint(0, 5)
        patch_internal("sites", updates, concurrency_check=False, _id=site_id)
        self.log.record(ev.TRANSITION, site_id, status=updates["status"])
