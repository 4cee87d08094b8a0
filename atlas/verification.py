"""What a client can see of a site's update, which Atlas never reports (atlas-api.md §3.5, §3.6).

`AtlasClient` gets these methods from `SiteChecks`:

- `statistics(site_ids)`: the sites' own reports, read in bulk (`site` `$in` up to 2,000 ids a
  request, pages followed), never one GET per site;
- `drush_item(label, commands)` and `run_drush(item, query)`: ask Atlas for fresh reports
  (`drush atlas-statistics` on the sites matching `query`, on Atlas's command queue);
- `page_status(url)`: what a site's page answers, with a cache-busting query string, no
  credentials and no redirects followed; `site_page_url(site_url, path)` builds that URL.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from .errors import AtlasError, AuthenticationError, DrushRoleMissing, NotFound, Unavailable, ValidationFailed
from .selectors import validate_where
from .types import NEVER, DrushItem, Statistics, format_date

if TYPE_CHECKING:
    from .client import AtlasClient

# Stored in a new drush item until its first run: a where that matches no site (`query` must be
# a string of 9 characters or more; its default, the boolean True, breaks Atlas's prepare task).
NO_SITES_QUERY = '{"_id":{"$in":[]}}'
STATISTICS_PROJECTION = {
    "site": 1,
    "express_code_version": 1,
    "express_core_schema_version": 1,
    "drupal_system_status": 1,
}
CACHE_BUSTER = "portal-check"
_busters = itertools.count(1)


def site_page_url(site_url: str, path: str) -> str:
    """A site's page: `<site URL>/<path>`, the homepage's at the site URL itself (Atlas's
    `tasks.drush_command_run`)."""
    base = site_url.rstrip("/")
    if path == "homepage":
        return base
    return f"{base}/{quote(path.strip('/'), safe='/')}"


class _NoCredentials(requests.auth.AuthBase):
    """Pages get no Authorization header, not even one `requests` would take from ~/.netrc."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        return request


class SiteChecks:
    """The reads and requests that tell whether a site's update worked (see the module doc)."""

    def _init_site_checks(
        self: AtlasClient, *, verify: bool, page_timeout: float, pool_size: int, statistics_chunk: int
    ) -> None:
        self.page_timeout = (self.timeout[0], page_timeout)
        # Ids per statistics request; halved for good when Atlas refuses a URL as too long (414).
        self.statistics_chunk = max(1, statistics_chunk)
        self.pages_requested = 0  # for benchmarks and tests
        self.page_session = requests.Session()
        self.page_session.verify = verify
        self.page_session.headers.update(
            {"User-Agent": "express-release-portal", "Cache-Control": "no-cache"}
        )
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.page_session.mount("http://", adapter)
        self.page_session.mount("https://", adapter)

    # -- statistics ----------------------------------------------------------------------------

    def statistics(
        self: AtlasClient,
        site_ids: Iterable[str],
        *,
        showing: str | None = None,
        since: datetime | None = None,
    ) -> dict[str, Statistics]:
        """The statistics item of each site that has one, by site id, read in bulk: ids in
        chunks of up to 2,000 per request (`where={"site":{"$in":[...]}}`), pages followed.

        `showing`: only the reports that show this version with no error-level status (the ones a
        verification acts on), so a site still updating costs no read; `since`: only reports
        written after it (Atlas's `_updated`, whole seconds)."""
        terms: dict = {}
        if showing is not None:
            terms.update({"express_code_version": showing, "drupal_system_status": False})
        if since is not None and since > NEVER:  # Atlas cannot parse year 1 in a where
            terms.update(_written("$gt", since))
        found: dict[str, Statistics] = {}
        for chunk in self._site_chunks(site_ids):
            self._read_statistics(chunk, terms, found)
        return found

    def reports_since(self: AtlasClient, site_ids: Iterable[str], since: datetime) -> int:
        """How many of the sites have written their statistics report since `since` (Atlas's
        clock, whole seconds, inclusive), counted by Atlas: no report is read."""
        return sum(
            self.count("statistics", {"site": {"$in": chunk}, **_written("$gte", since)})
            for chunk in self._site_chunks(site_ids)
        )

    def silent_since(self: AtlasClient, site_ids: Iterable[str], since: datetime) -> set[str]:
        """The sites whose last statistics report was written before `since` (Atlas's clock):
        only their items are read, the site id of each."""
        silent: set[str] = set()
        for chunk in self._site_chunks(site_ids):
            where = {"site": {"$in": chunk}, **_written("$lt", since)}
            for page in self.iter_pages("statistics", where, {"site": 1}):
                silent.update(str(doc.get("site", "")) for doc in page)
        return silent

    def _site_chunks(self: AtlasClient, site_ids: Iterable[str]) -> Iterator[list[str]]:
        """The distinct site ids, `statistics_chunk` at a time (read as each chunk is taken: a
        414 met in one shrinks the next)."""
        ids = list(dict.fromkeys(str(site_id) for site_id in site_ids))
        start = 0
        while start < len(ids):
            chunk = ids[start : start + self.statistics_chunk]
            yield chunk
            start += len(chunk)

    def _read_statistics(
        self: AtlasClient, ids: list[str], terms: dict, found: dict[str, Statistics]
    ) -> None:
        try:
            for page in self.iter_pages("statistics", {"site": {"$in": ids}, **terms}, STATISTICS_PROJECTION):
                for doc in page:
                    report = Statistics.from_document(doc)
                    earlier = found.get(report.site_id)
                    if earlier is None or report.updated >= earlier.updated:
                        found[report.site_id] = report
        except AtlasError as exc:
            if exc.status != 414 or len(ids) == 1:
                raise
            # A proxy in front of Atlas limits the request line (Apache: 8,190 bytes by default).
            half = len(ids) // 2
            self.statistics_chunk = min(self.statistics_chunk, half)
            self._read_statistics(ids[:half], terms, found)
            self._read_statistics(ids[half:], terms, found)

    # -- drush ---------------------------------------------------------------------------------

    def drush_item(self: AtlasClient, label: str, commands: list[str]) -> DrushItem:
        """The drush item labelled `label`, its commands set to `commands`; created when there is
        none. Atlas keeps `commands` unique across items: when another item already has exactly
        these commands, that item is used (running them on more sites is what it is for)."""
        commands = list(commands)
        existing = self._drush_items({"label": label})
        if existing:
            item = existing[0]
            if list(item.commands) != commands:
                item = self._patch_drush(item, {"commands": commands})
            return item
        payload = {"label": label, "commands": commands, "query": NO_SITES_QUERY}

        def reread() -> tuple[bool, str]:
            found = self._drush_items({"label": label})
            return (bool(found), found[0].etag if found else "")

        def send(etag: str) -> requests.Response:
            return self._send("POST", "drush", payload=payload, etag=None, timeout=self.timeout)

        try:
            result = self._write(send, reread, etag="")
        except ValidationFailed as exc:
            same = self._drush_items({"commands": commands}) if "commands" in exc.issues else []
            if not same:
                raise
            return same[0]
        if result.already:
            return self._drush_items({"label": label})[0]
        return self._drush(result.id)

    def run_drush(self: AtlasClient, item: DrushItem, query: dict) -> DrushItem:
        """Set the item's `query` (If-Match from its `_etag`), then `POST /drush/<id>/execute`.

        Atlas only queues the run: its prepare task reads the query when it runs, on the command
        queue, so a later `run_drush` with another query may overtake this one. Returns the item
        with its new ETag and query. `DrushRoleMissing` when the account lacks the drush role.
        """
        validate_where(query)
        text = _compact(query)
        item = self._patch_drush(item, {"query": text})
        attempts = 0
        while True:
            attempts += 1
            try:
                self._send("POST", f"drush/{item.id}/execute", payload=None, etag=None, timeout=self.timeout)
                return item
            except AuthenticationError as exc:
                if exc.status == 403:
                    raise DrushRoleMissing(
                        "the account lacks the drush role: Atlas will not run drush for it",
                        environment=self.environment,
                        url=exc.url,
                        status=403,
                        body=exc.body,
                    ) from None
                raise
            except Unavailable:
                # Sending it twice only makes the sites report twice: safe to send again.
                if attempts >= self.max_attempts:
                    raise
                self._sleep_backoff(attempts)

    def _drush_items(self: AtlasClient, where: dict) -> list[DrushItem]:
        return [DrushItem.from_document(doc) for doc in self.iter_documents("drush", where)]

    def _drush(self: AtlasClient, drush_id: str) -> DrushItem:
        doc = self._get_item(f"drush/{drush_id}")
        if doc is None:
            raise NotFound(
                "the drush item no longer exists",
                environment=self.environment,
                url=self._url(f"drush/{drush_id}"),
                status=404,
            )
        return DrushItem.from_document(doc)

    def _patch_drush(self: AtlasClient, item: DrushItem, changes: dict) -> DrushItem:
        def reread() -> tuple[bool, str]:
            doc = self._require_item(f"drush/{item.id}")
            return (all(doc.get(key) == value for key, value in changes.items()), doc["_etag"])

        def send(etag: str) -> requests.Response:
            return self._send("PATCH", f"drush/{item.id}", payload=changes, etag=etag, timeout=self.timeout)

        result = self._write(send, reread, etag=item.etag)
        fields = {**_fields(item), **changes, "_id": item.id, "_etag": result.etag}
        return replace(DrushItem.from_document(fields), updated=result.updated)

    # -- pages ---------------------------------------------------------------------------------

    def page_status(self: AtlasClient, url: str) -> int | None:
        """The HTTP status of a site's page (a redirect is its own 3xx), or None when the page
        could not be reached in time. A fresh query string each time gets past Varnish."""
        self.pages_requested += 1
        try:
            response = self.page_session.get(
                _cache_busted(url), timeout=self.page_timeout, allow_redirects=False, auth=_NoCredentials()
            )
        except requests.RequestException:
            return None
        response.close()
        return response.status_code


def _cache_busted(url: str) -> str:
    parts = urlsplit(url)
    buster = f"{CACHE_BUSTER}={time.time_ns():x}{next(_busters):x}"
    query = f"{parts.query}&{buster}" if parts.query else buster
    return urlunsplit(parts._replace(query=query, fragment=""))


def _written(operator: str, since: datetime) -> dict:
    """A `where` term on when a report was written (Atlas's `_updated`, its DATE_FORMAT)."""
    return {"_updated": {operator: format_date(since)}}


def _compact(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


def _fields(item: DrushItem) -> dict:
    return {"label": item.label, "commands": list(item.commands), "query": item.query}
