"""The `statistics` items, written only by the sites themselves (atlas-api.md §3.6).

One item per site (`site` is unique): Atlas creates an empty one with the site; the site PUTs
its report into it from cron or `drush atlas-statistics`; take_down and site_remove delete it.
"""

import random
import re
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from eve.methods.delete import deleteitem_internal
from eve.methods.post import post_internal
from eve.methods.put import put_internal

if TYPE_CHECKING:
    from .state import SimulatorState

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def code_schema(version: str) -> int:
    """express_core's latest schema in a profile version (2.8.4 → 7284; other builds 7000)."""
    match = _VERSION.match(version or "")
    if not match:
        return 7000
    major, minor, patch = (int(part) for part in match.groups())
    return 7000 + major * 100 + minor * 10 + patch


def report_payload(
    site_id: ObjectId, *, path: str, status: str, version: str, schema: int, error: bool, at: float
) -> dict[str, Any]:
    """A site's statistics report: its code and database state, and content counts that stay
    the same from one report to the next."""
    rng = random.Random(str(site_id))
    nodes = {kind: rng.randint(0, 60) for kind in ("page", "article", "person", "file", "webform")}
    total = sum(nodes.values())
    return {
        "site": site_id,
        "name": path or str(site_id),
        "status": status,
        "nodes_total": total,
        "node_revision_total": total * rng.randint(1, 4),
        "nodes_by_type": nodes,
        "beans_total": rng.randint(0, 40),
        "days_since_last_edit": rng.randint(0, 400),
        "days_since_last_login": rng.randint(0, 400),
        "variable_cron_last": int(at),
        "express_code_version": version,
        "express_core_schema_version": schema,
        "theme_is_responsive": True,
        "drupal_system_status": error,
    }


class StatisticsStore:
    """Writes the sites' reports through Eve, so `_updated`, `_etag` and `_version` move as
    Atlas's do. Callers hold the simulator's lock."""

    def __init__(self, state: "SimulatorState") -> None:
        self.state = state
        self._ids: dict[ObjectId, ObjectId] | None = None  # site → its statistics item

    def _known(self) -> dict[ObjectId, ObjectId]:
        if self._ids is None:
            items = self.state.db["statistics"].find({"_deleted": {"$ne": True}}, {"site": 1})
            self._ids = {item["site"]: item["_id"] for item in items}
        return self._ids

    def write(self, site_id: ObjectId, payload: dict) -> None:
        # Sites send valid reports, one item each: skip Eve's validation (its `unique` check
        # scans every report in mongomock), so a drush run over thousands of sites stays fast.
        known = self._known()
        with self.state.app.test_request_context("/"):
            if site_id in known:
                put_internal(
                    "statistics", payload, concurrency_check=False, skip_validation=True, _id=known[site_id]
                )
            else:
                response, *_ = post_internal("statistics", payload, skip_validation=True)
                known[site_id] = ObjectId(response["_id"])

    def create(self, sites: list[dict]) -> None:
        """Atlas's on_inserted_sites: an empty statistics item for each new site."""
        new = [site["_id"] for site in sites if site["_id"] not in self._known()]
        if not new:
            return
        with self.state.app.test_request_context("/"):
            response, *_ = post_internal("statistics", [{"site": oid} for oid in new], skip_validation=True)
        for site_id, item in zip(new, response.get("_items", [response]), strict=True):
            self._known()[site_id] = ObjectId(item["_id"])

    def drop(self, site_id: ObjectId) -> None:
        """Soft-delete the site's statistics item (take_down, site_remove)."""
        statistics_id = self._known().pop(site_id, None)
        if statistics_id is None:
            return
        with self.state.app.test_request_context("/"):
            deleteitem_internal("statistics", concurrency_check=False, _id=statistics_id)
