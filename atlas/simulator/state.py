"""What one simulated Atlas holds besides its Eve app: the lock, the event log, its RNG."""

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from eve.methods.patch import patch_internal
from flask import Flask

from . import events as ev
from . import slugs
from .drupal import Drupal, DrupalSettings
from .tasks import AtlasTasks


@dataclass
class SimulatorState:
    """Shared by the hooks, the background tasks, the WSGI wrappers and the server.

    mongomock is not thread-safe, so every request and every background task runs under
    `lock`; the server's artificial latencies are slept outside it.
    """

    app: Flask
    environment: str
    users: dict[str, str]
    rng: random.Random
    lock: threading.RLock = field(default_factory=threading.RLock)
    events: ev.EventLog = field(default_factory=ev.EventLog)
    seed_seconds: float = 0.0
    cascade_delay: float = 0.0  # seconds the code→site cascade sleeps per site (lock released)
    stopped: bool = False  # the server stopped: requests still in its threads apply nothing
    drush_denied: set[str] = field(default_factory=set)  # users lacking the `drush` role
    max_url_length: int = 0  # longer request lines are refused with 414 (0: no limit)
    tasks: AtlasTasks = field(init=False)
    drupal: Drupal = field(init=False)
    _sids: set[str] = field(default_factory=set)

    def attach_tasks(self, *, delay: float) -> None:
        self.tasks = AtlasTasks(self.app, self.lock, self.events, self.rng, delay=delay)

    def attach_drupal(self, settings: DrupalSettings, *, seed: int) -> None:
        self.drupal = Drupal(self, settings, seed=seed)

    def stop(self) -> None:
        """Atlas is gone: no more requests or background work are applied."""
        with self.lock:
            self.stopped = True
        self.tasks.stop()
        self.drupal.stop()

    @property
    def db(self) -> Any:
        return self.app.data.database

    def remember_sids(self, sids: Iterable[str]) -> None:
        self._sids.update(sids)

    def new_sid(self) -> str:
        """`p1` + 10 hex digits, unique in this Atlas."""
        return slugs.new_sid(self.rng, self._sids)

    def current_code(self, name: str, code_type: str) -> dict | None:
        query = {
            "meta.name": name,
            "meta.code_type": code_type,
            "meta.is_current": True,
            "_deleted": {"$ne": True},
        }
        return self.db["code"].find_one(query, sort=[("_id", -1)])

    def touch_site(self, site_id: str | ObjectId) -> bool:
        """Write to a site as Atlas's own tasks do, so a client's `_etag` becomes stale.

        Returns False when there is no live site with that id (a soft-deleted site is left
        alone: a PATCH would restore it).
        """
        oid = ObjectId(site_id)
        with self.lock, self.app.test_request_context("/"):
            if not self.db["sites"].find_one({"_id": oid, "_deleted": {"$ne": True}}, {"_id": 1}):
                return False
            patch_internal("sites", {}, concurrency_check=False, _id=oid)
            self.events.record(ev.TOUCH, oid)
            return True

    def take_pool_site(self, site_id: str | ObjectId | None = None, exclude: str | None = None) -> str | None:
        """Take an `available` site from the pool as an install or a restore does (status →
        `installed`): `site_id` if given and available, else a random one other than `exclude`.
        Returns the id taken, or None when there was nothing to take."""
        with self.lock, self.app.test_request_context("/"):
            query: dict[str, Any] = {"status": "available", "_deleted": {"$ne": True}}
            if site_id is not None:
                query["_id"] = ObjectId(site_id)
            candidates = [s["_id"] for s in self.db["sites"].find(query, {"_id": 1})]
            candidates = [c for c in candidates if str(c) != str(exclude)]
            if not candidates:
                return None
            oid = candidates[0] if site_id is not None else self.rng.choice(candidates)
            patch_internal("sites", {"status": "installed"}, concurrency_check=False, _id=oid)
            self.events.record(ev.POOL_TAKE, oid)
            self.tasks.after_request()
            return str(oid)
