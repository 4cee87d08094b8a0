"""Atlas's request hooks (atlas-api.md §3), as Eve event hooks on the simulated app.

Where Atlas makes internal HTTP calls to itself (demotion, the code→site cascade), the simulator
calls Eve's own `patch_internal`, which validates, bumps `_etag`/`_version`/`_updated`, writes
the shadow version and fires the same hooks, so the effects look the same over HTTP.
"""

import time
from typing import Any

from bson import ObjectId
from eve.methods.patch import patch_internal
from flask import Flask, abort, g
from werkzeug.exceptions import HTTPException

from . import events as ev
from .schema import CODE_REFERENCE_FIELDS, DEPLOY_DEFAULTS
from .state import SimulatorState
from .tasks import POOL_STATUSES, TASK_OUTCOME

LAUNCHED_MESSAGE = "Instance is launched or launching. To delete, take instance down first."
CODE_IN_USE_MESSAGE = (
    "A conflict happened while processing the request. Code item is in use by one or more sites."
)
CASCADE_META_KEYS = ("name", "version", "code_type")
CHECKOUT_META_KEYS = ("name", "version", "code_type", "is_current")
# The date Atlas stamps when a site enters a status.
STATUS_DATES = {"installing": "assigned", "launching": "launched", "take_down": "taken_down"}


# Eve's events (`app.<event> += handler`) and the AtlasHooks method each runs.
EVENT_HOOKS = (
    ("on_insert", "stamp_created_by"),
    ("on_update", "stamp_modified_by"),
    ("on_replace", "stamp_modified_by"),
    ("on_insert_code", "before_code_insert"),
    ("on_inserted_code", "after_code_inserted"),
    ("on_update_code", "before_code_update"),
    ("on_updated_code", "after_code_updated"),
    ("on_pre_DELETE_code", "guard_code_delete"),
    ("on_insert_sites", "fill_site_defaults"),
    ("on_inserted_sites", "after_sites_inserted"),
    ("on_update_sites", "before_site_update"),
    ("on_updated_sites", "after_site_updated"),
    ("on_pre_DELETE_sites", "before_site_delete"),
    ("on_deleted_item_sites", "after_site_deleted"),
)


def register(app: Flask, state: SimulatorState) -> None:
    hooks = AtlasHooks(state)
    for event, method in EVENT_HOOKS:
        handlers = getattr(app, event)  # an Eve `Events` list: `+=` adds in place
        handlers += getattr(hooks, method)


def _object_id(value: Any) -> ObjectId | None:
    try:
        return ObjectId(value)
    except (TypeError, ValueError):
        return None


class AtlasHooks:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.log = state.events

    @property
    def code(self) -> Any:
        return self.state.db["code"]

    @property
    def sites(self) -> Any:
        return self.state.db["sites"]

    # -- created_by / modified_by -----------------------------------------------------------

    def stamp_created_by(self, resource: str, items: list[dict]) -> None:
        user = g.get("atlas_user")
        if user:
            for item in items:
                item.setdefault("created_by", user)
                item.setdefault("modified_by", user)

    def stamp_modified_by(self, resource: str, updates: dict, original: dict) -> None:
        user = g.get("atlas_user")
        if user:
            updates.setdefault("modified_by", user)

    # -- code --------------------------------------------------------------------------------

    def before_code_insert(self, items: list[dict]) -> None:
        for item in items:
            meta = item["meta"]
            if self._duplicate_exists(meta):
                abort(
                    409,
                    description=f"Error: A {meta['code_type']} named "
                    f"{meta['name']}-{meta['version']} already exists.",
                )
            if meta.get("is_current"):
                self._demote_current(meta["name"], meta["code_type"], keep=None)
            item.setdefault("deploy", dict(DEPLOY_DEFAULTS))

    def after_code_inserted(self, items: list[dict]) -> None:
        for item in items:
            self.log.record(ev.CODE_DEPLOY, item["_id"], meta=dict(item["meta"]))

    def _duplicate_exists(self, meta: dict) -> bool:
        query = {f"meta.{key}": meta[key] for key in CASCADE_META_KEYS}
        query["_deleted"] = {"$ne": True}
        return self.code.find_one(query, {"_id": 1}) is not None

    def _demote_current(self, name: str, code_type: str, keep: ObjectId | None) -> None:
        query = {
            "meta.name": name,
            "meta.code_type": code_type,
            "meta.is_current": True,
            "_deleted": {"$ne": True},
        }
        for item in list(self.code.find(query, {"_id": 1})):
            if item["_id"] == keep:
                continue
            patch_internal("code", {"meta": {"is_current": False}}, concurrency_check=False, _id=item["_id"])
            self.log.record(ev.DEMOTE, item["_id"])

    def before_code_update(self, updates: dict, original: dict) -> None:
        new_meta = updates.get("meta")
        merged = {**original.get("meta", {}), **(new_meta or {})}
        if new_meta and new_meta.get("is_current") is True:
            self._demote_current(merged["name"], merged["code_type"], keep=original["_id"])
        if self._checks_out(updates):
            self.log.record(
                ev.CODE_UPDATE, original["_id"], meta=merged, commit_hash=updates.get("commit_hash")
            )

    def after_code_updated(self, updates: dict, original: dict) -> None:
        # Atlas's cascade runs in on_updated_code: Eve has stored the item already, so a re-read
        # during the cascade shows the new commit (atlas-api.md §3.2).
        merged = {**original.get("meta", {}), **(updates.get("meta") or {})}
        if self._cascades(updates, original, merged):
            self._cascade(original)

    @staticmethod
    def _checks_out(updates: dict) -> bool:
        meta = updates.get("meta") or {}
        return (
            "commit_hash" in updates or "git_url" in updates or any(key in meta for key in CHECKOUT_META_KEYS)
        )

    @staticmethod
    def _cascades(updates: dict, original: dict, merged: dict) -> bool:
        """Atlas's rule (§3.2): a `meta` in the payload suppresses the commit/URL trigger."""
        if "meta" not in updates:
            return "commit_hash" in updates or "git_url" in updates
        old = original.get("meta", {})
        return any(merged.get(key) != old.get(key) for key in CASCADE_META_KEYS)

    def _cascade(self, code_item: dict) -> None:
        code_id = code_item["_id"]
        query = {
            "_deleted": {"$ne": True},
            "$or": [{f"code.{field}": code_id} for field in CODE_REFERENCE_FIELDS],
        }
        for site in list(self.sites.find(query, {"code": 1})):
            payload = self._same_reference(site.get("code", {}), code_id)
            g.atlas_cascade = True
            try:
                patch_internal("sites", payload, concurrency_check=False, _id=site["_id"])
                self.log.record(ev.CASCADE, site["_id"], code=str(code_id))
            except HTTPException:
                pass  # Atlas only logs a failed cascade PATCH and goes on with the next site
            finally:
                g.atlas_cascade = False
            self._cascade_pause()
        self.log.record(ev.CASCADE_END, code_id)

    def _cascade_pause(self) -> None:
        """Atlas's cascade is slow (HTTP + LDAP per site); other requests go on meanwhile."""
        if self.state.cascade_delay <= 0:
            return
        self.state.lock.release()
        try:
            time.sleep(self.state.cascade_delay)
        finally:
            self.state.lock.acquire()

    @staticmethod
    def _same_reference(code: dict, code_id: ObjectId) -> dict:
        for field in ("profile", "core"):
            if code.get(field) == code_id:
                return {"code": {field: code_id}}
        return {"code": {"package": list(code.get("package", []))}}

    def guard_code_delete(self, request: Any, lookup: dict) -> None:
        code_id = _object_id(lookup.get("_id"))
        query = {
            "_deleted": {"$ne": True},
            "$or": [{f"code.{field}": code_id} for field in CODE_REFERENCE_FIELDS],
        }
        if code_id is not None and self.sites.find_one(query, {"_id": 1}):
            abort(409, description=CODE_IN_USE_MESSAGE)

    # -- sites -------------------------------------------------------------------------------

    def fill_site_defaults(self, items: list[dict]) -> None:
        for item in items:
            if not item.get("sid"):
                item["sid"] = self.state.new_sid()
            item.setdefault("path", item["sid"])
            if item.get("update_group") is None:
                item["update_group"] = self.state.rng.randint(0, 2)
            code = item.setdefault("code", {})
            for field, name, code_type in (("core", "drupal", "core"), ("profile", "express", "profile")):
                if not code.get(field):
                    current = self.state.current_code(name, code_type)
                    if current is not None:
                        code[field] = current["_id"]
            item.setdefault("dates", {}).setdefault("created", item["_created"])

    def after_sites_inserted(self, items: list[dict]) -> None:
        self.state.drupal.statistics.create(items)
        self.state.drupal.paths_changed()
        if any(item.get("status") == "pending" for item in items):
            self.state.tasks.request_provision()

    def before_site_update(self, updates: dict, original: dict) -> None:
        status = updates.get("status")
        if status in STATUS_DATES:
            updates.setdefault("dates", {})[STATUS_DATES[status]] = updates["_updated"]
        if "code" in updates:
            code = {**original.get("code", {}), **updates["code"]}
            source = "cascade" if g.get("atlas_cascade") else "client"
            profile = code.get("profile")
            self.log.record(ev.SITE_UPDATE, original["_id"], profile=str(profile), source=source)

    def after_site_updated(self, updates: dict, original: dict) -> None:
        if "code" in updates:
            source = "cascade" if g.get("atlas_cascade") else "client"
            self.state.drupal.queue_update(original, updates, source)
        if "path" in updates:
            self.state.drupal.paths_changed()
        status = updates.get("status")
        if status == "down":
            self.state.drupal.statistics.drop(original["_id"])  # take_down deletes them
        if status in TASK_OUTCOME:
            self.state.tasks.request_transition(original["_id"], status)
        if original.get("status") in POOL_STATUSES and status and status not in POOL_STATUSES:
            # A site taken from the pool (installing, restore): Atlas's periodic
            # available_sites_check tops the pool up again.
            self.state.tasks.request_refill()

    def before_site_delete(self, request: Any, lookup: dict) -> None:
        site_id = _object_id(lookup.get("_id"))
        site = self.sites.find_one({"_id": site_id}) if site_id else None
        if site is None or site.get("_deleted"):
            return  # Eve answers 404 (or 204 for an already deleted site)
        if site.get("status") in ("launched", "launching"):
            abort(409, description=LAUNCHED_MESSAGE)
        # Queued before Eve checks If-Match: a DELETE that then fails 412/428 has still
        # destroyed the instance (atlas-api.md §3.4).
        self.log.record(
            ev.SITE_REMOVE, site_id, sid=site.get("sid"), path=site.get("path"), status=site.get("status")
        )
        self.state.drupal.remove(site_id)

    def after_site_deleted(self, original: dict) -> None:
        self.state.drupal.paths_changed()
        self.state.tasks.request_refill()
