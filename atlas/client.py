"""The Atlas client: the only code in the portal that speaks HTTP to Atlas.

It knows the Eve protocol as Atlas configures it (atlas-api.md §2): Basic auth, `where` as JSON,
`sort=_id`, pages of 2,000 followed through `_links.next`, If-Match from the body `_etag`, and the
error envelopes. Writes are retried only when retrying is safe: a write whose outcome is unknown
(or that failed with a 412 or a 5xx) is re-read before it is sent again, because a profile PATCH
is not a no-op on Atlas and a DELETE destroys the instance even when its ETag check fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests

from .errors import NotFound, PreconditionFailed
from .selectors import validate_where
from .transport import Transport
from .types import CodeItem, Site, WriteResult
from .verification import SiteChecks, site_page_url
from .writes import Writes

# A page number past any collection's last page: Eve answers it with no items and the total.
PAST_THE_LAST = 1_000_000

__all__ = ["AtlasClient", "site_page_url"]

PAGE_SIZE = 2000  # Atlas's PAGINATION_LIMIT; larger values are capped silently
NULL_ID = "0" * 24
SITE_PROJECTION = {"sid": 1, "path": 1, "status": 1, "update_group": 1, "code": 1}


class AtlasClient(Writes, SiteChecks, Transport):
    """One Atlas environment. Thread-safe for concurrent writes (one pooled `requests.Session`).

    How a request is sent and its answer read is in `Transport`; how a write is retried and a pool
    site deleted, in `Writes`; what tells whether a site's update worked (statistics, drush,
    pages), in `SiteChecks`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        environment: str = "",
        verify: bool = True,
        connect_timeout: float = 3.05,
        read_timeout: float = 30.0,
        code_write_timeout: float = 900.0,
        max_attempts: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 8.0,
        pool_size: int = 16,
        page_size: int = PAGE_SIZE,
        page_timeout: float = 10.0,
        statistics_chunk: int = PAGE_SIZE,
    ) -> None:
        self.environment = environment
        self.timeout = (connect_timeout, read_timeout)
        # Atlas re-PATCHes every site using a code item inside the PATCH /code request (§3.2).
        self.code_write_timeout = (connect_timeout, code_write_timeout)
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.page_size = min(page_size, PAGE_SIZE)
        self._init_transport(base_url, (username, password), verify=verify, pool_size=pool_size)
        self._init_site_checks(
            verify=verify,
            page_timeout=page_timeout,
            pool_size=pool_size,
            statistics_chunk=min(statistics_chunk, PAGE_SIZE),
        )

    def close(self) -> None:
        self.session.close()
        self.page_session.close()

    # -- reads ---------------------------------------------------------------------------------

    def list_sites(self, where: dict, projection: dict | None = SITE_PROJECTION) -> list[Site]:
        """Every non-deleted site matching `where`, read completely before the caller writes."""
        return [Site.from_document(doc) for doc in self.iter_documents("sites", where, projection)]

    def list_code(self, where: dict) -> list[CodeItem]:
        return [CodeItem.from_document(doc) for doc in self.iter_documents("code", where)]

    def count(self, resource: str, where: dict) -> int:
        """How many documents match, counted by Atlas: `_meta.total` of a page past the last,
        so no document is read."""
        body = self._get(resource, {"where": _dumps(where), "max_results": 1, "page": PAST_THE_LAST})
        return int(body.get("_meta", {}).get("total", 0))

    def iter_documents(self, resource: str, where: dict, projection: dict | None = None) -> Iterator[dict]:
        for page in self.iter_pages(resource, where, projection):
            yield from page

    def iter_pages(self, resource: str, where: dict, projection: dict | None = None) -> Iterator[list[dict]]:
        """Every matching document in `_id` order, a page of up to 2,000 at a time.

        Pages are cut by `_id` (`where` AND `_id > last seen`), not by page number: when Atlas
        changes sites between two pages, an offset would skip or repeat sites; a key never does.
        A page is fetched only when the caller asks for it, so a caller can persist as it reads.
        """
        validate_where(where)
        params: dict = {"sort": "_id", "max_results": self.page_size}
        if projection:
            params["projection"] = _dumps(projection)
        last = None
        while True:
            page_where = where if last is None else _after(where, last)
            body = self._get(resource, {**params, "where": _dumps(page_where)})
            items = body.get("_items", [])
            if items:
                yield items
            if not items or "next" not in body.get("_links", {}):
                return
            last = str(items[-1]["_id"])

    def get_site(self, site_id: str) -> Site | None:
        doc = self._get_item(f"sites/{site_id}")
        return Site.from_document(doc) if doc else None

    def get_code(self, code_id: str) -> CodeItem | None:
        doc = self._get_item(f"code/{code_id}")
        return CodeItem.from_document(doc) if doc else None

    def find_code(self, name: str, version: str, code_type: str) -> list[CodeItem]:
        where = {"meta.name": name, "meta.version": version, "meta.code_type": code_type}
        return self.list_code(where)

    def find_code_by_commit(self, commit_hash: str) -> list[CodeItem]:
        return self.list_code({"commit_hash": commit_hash})

    def check_credentials(self) -> None:
        """Prove the credentials without changing anything (atlas-api.md §2: GETs are public).

        `PATCH /code/<null id>` with `If-Match: x`: a bad login answers 401; a good one gets past
        authentication and fails on the lookup (404) or the precondition (412).
        """

        def probe() -> None:
            try:
                self._send("PATCH", f"code/{NULL_ID}", payload={}, etag="x", timeout=self.timeout)
            except (NotFound, PreconditionFailed):
                return

        self._retry_reads(probe)  # nothing to apply: a 5xx or no answer is simply asked again

    # -- writes --------------------------------------------------------------------------------

    def create_code(self, payload: dict) -> WriteResult:
        """POST /code. An unanswered POST is re-read (by commit hash) before it is sent again."""

        def reread() -> tuple[bool, str]:
            found = [c for c in self.find_code_by_commit(payload["commit_hash"]) if _same_code(c, payload)]
            return (bool(found), found[0].etag if found else "")

        def resend(etag: str) -> requests.Response:
            return self._send("POST", "code", payload=payload, etag=None, timeout=self.code_write_timeout)

        result = self._write(resend, reread, etag="")
        if result.already:
            item = next(c for c in self.find_code_by_commit(payload["commit_hash"]) if _same_code(c, payload))
            return WriteResult(item.id, item.etag, result.status, result.attempts, True)
        return result

    def patch_code(self, code_id: str, changes: dict, *, etag: str) -> WriteResult:
        """PATCH /code/<id>. Never send `meta` together with `commit_hash` (atlas-api.md §0.4)."""
        has_meta = any(key == "meta" or key.startswith("meta.") for key in changes)
        if has_meta and ("commit_hash" in changes or "git_url" in changes):
            raise ValueError("never combine meta with commit_hash/git_url in one PATCH: it skips the cascade")

        def reread() -> tuple[bool, str]:
            item = self._require_item(f"code/{code_id}")
            return (_contains(item, changes), item["_etag"])

        def resend(fresh: str) -> requests.Response:
            return self._send(
                "PATCH", f"code/{code_id}", payload=changes, etag=fresh, timeout=self.code_write_timeout
            )

        # A PATCH that changes the commit makes Atlas re-deploy every site on the item inside the
        # request (§3.2). One that may still be running on Atlas (no answer, or a gateway that gave
        # up on it) is never sent again: a second one would run the cascade twice.
        cascading = "commit_hash" in changes or "git_url" in changes
        return self._write(resend, reread, etag=etag, resend_unknown=not cascading)

    def update_site_profile(self, site_id: str, profile_id: str, *, etag: str) -> WriteResult:
        """PATCH a site onto a profile. A site already on it is never PATCHed again (not a no-op)."""
        changes = {"code": {"profile": profile_id}}

        def reread() -> tuple[bool, str]:
            doc = self._require_item(f"sites/{site_id}")
            return ((doc.get("code") or {}).get("profile") == profile_id, doc["_etag"])

        def resend(fresh: str) -> requests.Response:
            return self._send("PATCH", f"sites/{site_id}", payload=changes, etag=fresh, timeout=self.timeout)

        return self._write(resend, reread, etag=etag)

    # -- machinery -----------------------------------------------------------------------------


def _dumps(value: dict) -> str:
    """Compact JSON in the selector's own key order: the operator's terms first, the terms the
    portal adds (the profile exclusion, the page key) last. Atlas's Mongo plans a query whatever
    its order, but a scanning store (mongomock in the simulator) tests the terms in the order
    given, and the operator's terms are the selective ones."""
    return json.dumps(value, separators=(",", ":"))


def _after(where: dict, last_id: str) -> dict:
    """`where` AND `_id > last_id` (Eve casts the ObjectId-shaped string)."""
    term = {"_id": {"$gt": last_id}}
    return {**where, **term} if "_id" not in where else {"$and": [where, term]}


def _contains(doc: dict, changes: dict) -> bool:
    """Whether every (nested) value in `changes` is already in `doc`."""
    for key, value in changes.items():
        current = doc
        for part in key.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if isinstance(value, dict):
            if not isinstance(current, dict) or not _contains(current, value):
                return False
        elif current != value:
            return False
    return True


def _same_code(item: CodeItem, payload: dict) -> bool:
    meta = payload.get("meta", {})
    return (item.name, item.version, item.code_type) == (
        meta.get("name"),
        str(meta.get("version")),
        meta.get("code_type"),
    )
