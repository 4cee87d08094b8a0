"""The Atlas client: the only code in the portal that speaks HTTP to Atlas.

It knows the Eve protocol as Atlas configures it (atlas-api.md §2): Basic auth, `where` as JSON,
`sort=_id`, pages of 2,000 followed through `_links.next`, If-Match from the body `_etag`, and the
error envelopes. Writes are retried only when retrying is safe: a write whose outcome is unknown
(or that failed with a 412 or a 5xx) is re-read before it is sent again, because a profile PATCH
is not a no-op on Atlas and a DELETE destroys the instance even when its ETag check fails.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from .errors import (
    AtlasError,
    AuthenticationError,
    BadRequest,
    Cancelled,
    Conflict,
    NotFound,
    OutcomeUnknown,
    PossiblyDestroyed,
    PreconditionFailed,
    Unavailable,
    ValidationFailed,
)
from .selectors import validate_where
from .types import CodeItem, DeleteResult, Site, WriteResult
from .verification import SiteChecks, site_page_url

__all__ = ["AtlasClient", "site_page_url"]

logger = logging.getLogger(__name__)

PAGE_SIZE = 2000  # Atlas's PAGINATION_LIMIT; larger values are capped silently
NULL_ID = "0" * 24
SITE_PROJECTION = {"sid": 1, "path": 1, "status": 1, "update_group": 1, "code": 1}

# What a re-read says about a write that may or may not have landed: (applied?, fresh ETag).
Reread = Callable[[], tuple[bool, str]]


class AtlasClient(SiteChecks):
    """One Atlas environment. Thread-safe for concurrent writes (one pooled `requests.Session`).

    What tells whether a site's update worked (statistics, drush, pages) is in `SiteChecks`.
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
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        parts = urlsplit(self.base_url)
        # Never show credentials someone put into the URL itself.
        self.safe_base_url = parts._replace(
            netloc=parts.hostname + (f":{parts.port}" if parts.port else "")
        ).geturl()
        self.environment = environment
        self.timeout = (connect_timeout, read_timeout)
        # Atlas re-PATCHes every site using a code item inside the PATCH /code request (§3.2).
        self.code_write_timeout = (connect_timeout, code_write_timeout)
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.page_size = min(page_size, PAGE_SIZE)
        self.session = requests.Session()
        self.session.auth = (username, password)
        self.session.verify = verify
        self.session.headers.update({"Accept": "application/json", "User-Agent": "express-release-portal"})
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.requests_sent = 0  # for benchmarks and tests: every HTTP request, retries included
        # Whether Atlas itself has answered a write of ours past authentication (GETs are public,
        # so they never prove the credentials, nor does the proxy in front answering 5xx).
        self.credentials_accepted = False
        # Since when Atlas has not answered (None while it answers), and the last failure: what
        # a caller shows while the client is still retrying.
        self.failing_since: float | None = None
        self.last_failure = ""
        # Asked before every write is sent, retries included: a caller that decided to stop (a
        # pause, an abort, a lost lease) sends nothing more, even from a retry loop under way.
        self.proceed: Callable[[], bool] = lambda: True
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
        body = self._get(resource, {"where": _dumps(where), "max_results": 1})
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

    def delete_available_site(self, site_id: str) -> DeleteResult:
        """DELETE a pool site, never destroying one that left the pool (atlas-api.md §3.4).

        Atlas queues the instance removal *before* it checks If-Match, so a stale ETag does not
        protect a site taken from the pool since it was listed. Before every DELETE, the first
        included, the site is read: it is sent only while it is still `available`, with the
        fresh `_etag`. A DELETE answered 412/428 or 5xx, or not at all, may have destroyed the
        instance: the site is read again; still `available` → the deletion is finished with the
        fresh ETag (the pool then refills); anything else → `PossiblyDestroyed`.
        """
        path = f"sites/{site_id}"
        doc = self._get_item(path)
        if _gone(doc):
            return DeleteResult(site_id, "already_deleted", 0)
        if doc.get("status") != "available":
            return DeleteResult(site_id, "left_pool", 0, site_status=str(doc.get("status")))
        sent = _Deletion()
        try:
            return self._delete_loop(site_id, path, doc, sent)
        except PossiblyDestroyed:
            raise
        except AtlasError as exc:
            if not sent.reached:
                raise  # no DELETE of ours reached Atlas: nothing was destroyed by us
            # An earlier DELETE reached Atlas (its removal may be queued) and the deletion could
            # not be finished or read back: whatever the site is now, an operator must look.
            raise PossiblyDestroyed(
                f"instance possibly destroyed: a DELETE reached Atlas ({sent.answer}) and the deletion "
                f"could not be finished or read back ({exc.message}); check the site in Atlas",
                environment=self.environment,
                url=self._url(path),
                status=exc.status,
            ) from None

    def _delete_loop(self, site_id: str, path: str, doc: dict, sent: _Deletion) -> DeleteResult:
        attempts, conflicted = 0, False
        while True:
            attempts += 1
            try:
                # Once a DELETE reached Atlas, finishing the deletion is the safe way out even if
                # the caller is stopping: the record is left as Atlas's own pool logic expects.
                response = self._send(
                    "DELETE", path, payload=None, etag=doc["_etag"], timeout=self.timeout, force=sent.reached
                )
            except Conflict:
                # 409 "launched or launching": this DELETE was refused before anything was queued.
                doc = self._retry_reads(lambda: self._get_item(path))
                if _gone(doc) or doc.get("status") == "available":
                    raise
                return self._left_pool(site_id, path, doc, attempts, sent)
            except (PreconditionFailed, Unavailable) as exc:
                reached = not (type(exc) is Unavailable and exc.status is None)  # else never connected
                if reached:
                    sent.reached, sent.status = True, exc.status
                    sent.answer = f"answered {exc.status or 'with no answer'}: {exc.message}"
                if not reached and attempts >= self.max_attempts:
                    raise
                if isinstance(exc, Unavailable):
                    self._sleep_backoff(attempts)
                doc = self._retry_reads(lambda: self._get_item(path))
                if _gone(doc):
                    return DeleteResult(site_id, "deleted", attempts, 204, after_conflict=conflicted)
                if doc.get("status") != "available":
                    return self._left_pool(site_id, path, doc, attempts, sent)
                if attempts >= self.max_attempts:
                    raise PossiblyDestroyed(
                        f"{attempts} DELETEs were refused ({exc.message}) while the record stayed "
                        "'available': its instance may already be removed; check the site in Atlas",
                        environment=self.environment,
                        url=self._url(path),
                        status=exc.status,
                    ) from None
                conflicted = conflicted or isinstance(exc, PreconditionFailed)
                continue
            return DeleteResult(site_id, "deleted", attempts, response.status_code, after_conflict=conflicted)

    def _left_pool(self, site_id: str, path: str, doc: dict, attempts: int, sent: _Deletion) -> DeleteResult:
        status = str(doc.get("status"))
        if not sent.reached:
            return DeleteResult(site_id, "left_pool", attempts, site_status=status)
        raise PossiblyDestroyed(
            f"instance possibly destroyed while the site was {status!r}: a DELETE reached Atlas "
            f"({sent.answer}) and Atlas removes the instance before it checks If-Match; check the "
            "site in Atlas",
            environment=self.environment,
            url=self._url(path),
            status=sent.status,
            body={"site_status": status, "path": doc.get("path"), "sid": doc.get("sid")},
        )

    # -- machinery -----------------------------------------------------------------------------

    def _write(
        self,
        send: Callable[[str], requests.Response],
        reread: Reread,
        *,
        etag: str,
        resend_unknown: bool = True,
    ) -> WriteResult:
        """Send a write; after a 412, a 5xx or no answer, re-read before sending it again (and
        not at all when the re-read shows it applied). With `resend_unknown=False`, a write that
        may still be running on Atlas is not sent again: `OutcomeUnknown` when the re-read does
        not show it applied."""
        attempts = 0
        while True:
            attempts += 1
            try:
                response = send(etag)
            except (PreconditionFailed, Unavailable) as exc:
                if attempts >= self.max_attempts:
                    raise
                logger.info(
                    "Atlas %s: %s; re-reading before attempt %d", self.environment, exc.message, attempts + 1
                )
                if isinstance(exc, Unavailable):
                    self._sleep_backoff(attempts)
                applied, etag = self._retry_reads(reread)
                if applied:
                    return WriteResult("", etag, 200, attempts, already=True)
                if not resend_unknown and _maybe_running(exc):
                    raise OutcomeUnknown(
                        f"{exc.message}; the write is not applied yet and may still be running on Atlas, "
                        "so it was not sent again",
                        environment=self.environment,
                        url=exc.url,
                        status=exc.status,
                    ) from None
                continue
            body = _json_or_empty(response)
            return WriteResult(
                str(body.get("_id", "")),
                str(body.get("_etag", "")),
                response.status_code,
                attempts,
                body=body,
            )

    def _retry_reads(self, read: Callable):
        attempts = 0
        while True:
            attempts += 1
            try:
                return read()
            except Unavailable:
                if attempts >= self.max_attempts:
                    raise
                self._sleep_backoff(attempts)

    def _get(self, path: str, params: dict | None = None) -> dict:
        return self._retry_reads(
            lambda: _json_or_empty(self._send("GET", path, params=params, timeout=self.timeout))
        )

    def _get_item(self, path: str) -> dict | None:
        """An item, including a soft-deleted one (Eve answers 404 with its document); None if absent."""
        try:
            return self._get(path)
        except NotFound as exc:
            return exc.body if isinstance(exc.body, dict) and "_id" in exc.body else None

    def _require_item(self, path: str) -> dict:
        doc = self._get_item(path)
        if doc is None or doc.get("_deleted"):
            raise NotFound(
                "the item no longer exists", environment=self.environment, url=self._url(path), status=404
            )
        return doc

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        payload: dict | None = None,
        etag: str | None = None,
        timeout: tuple[float, float],
        force: bool = False,
    ) -> requests.Response:
        url = self._url(path)  # what errors show
        target = urljoin(self.base_url, path)
        headers = {"If-Match": etag} if etag else {}
        if method != "GET" and not force and not self.proceed():
            raise Cancelled(f"{method} not sent: the step is stopping", environment=self.environment, url=url)
        self.requests_sent += 1
        try:
            response = self.session.request(
                method, target, params=params, json=payload, headers=headers, timeout=timeout
            )
        except requests.RequestException as exc:
            raise self._failing(self._transport_error(method, url, exc)) from None
        if method != "GET" and response.status_code < 500 and response.status_code not in (401, 403):
            self.credentials_accepted = True
        if response.status_code >= 400:
            error = self._http_error(response, url)
            if isinstance(error, Unavailable):
                raise self._failing(error)
            self.failing_since = None  # Atlas answered
            raise error
        self.failing_since = None
        return response

    def _failing(self, error: AtlasError) -> AtlasError:
        if self.failing_since is None:
            self.failing_since = time.time()
        self.last_failure = str(error)
        return error

    def _transport_error(self, method: str, url: str, exc: Exception) -> AtlasError:
        """Only a connection that was never made proves a request was not sent. Anything else (no
        answer in time, a reset or a closed connection, a broken response) may have reached Atlas:
        a write is then of unknown outcome and must be re-read, never simply sent again."""
        if _never_sent(exc):
            reason = "timed out connecting" if isinstance(exc, requests.Timeout) else "could not connect"
            return Unavailable(
                f"{method} {reason} ({type(exc).__name__})", environment=self.environment, url=url
            )
        if method == "GET":  # a read changes nothing: it is simply read again
            reason = "timed out" if isinstance(exc, requests.Timeout) else "got no usable answer"
            return Unavailable(
                f"{method} {reason} ({type(exc).__name__})", environment=self.environment, url=url
            )
        message = (
            f"no usable answer to {method} ({type(exc).__name__}); the write may or may not have been applied"
        )
        return OutcomeUnknown(message, environment=self.environment, url=url)

    def _http_error(self, response: requests.Response, url: str) -> AtlasError:
        body = _json_or_empty(response)
        status = response.status_code
        error = body.get("_error") if isinstance(body.get("_error"), dict) else {}
        message = str(body.get("message") or error.get("message") or response.reason or "error")
        kwargs = {"environment": self.environment, "url": url, "status": status, "body": body}
        if status in (401, 403):
            return AuthenticationError(
                "authentication failed: check the username and the password variable", **kwargs
            )
        if status == 404:
            return NotFound(message, **kwargs)
        if status == 409:
            return Conflict(message, **kwargs)
        if status in (412, 428):
            return PreconditionFailed(message, **kwargs)
        if status == 422:
            issues = body.get("_issues", {})
            return ValidationFailed(
                f"Atlas refused the payload: {json.dumps(issues, sort_keys=True)}", issues=issues, **kwargs
            )
        if status == 429 or status >= 500:
            return Unavailable(message, **kwargs)
        if status == 400:
            return BadRequest(message, **kwargs)
        return AtlasError(message, **kwargs)

    def _sleep_backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter."""
        time.sleep(random.uniform(0, min(self.backoff_cap, self.backoff * 2 ** (attempt - 1))))

    def _url(self, path: str) -> str:
        """The URL to show in errors and logs: never with credentials from the base URL."""
        return urljoin(self.safe_base_url, path)


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


class _Deletion:
    """Whether any DELETE of one site reached Atlas, and what it was answered."""

    reached = False
    status: int | None = None
    answer = ""


def _maybe_running(exc: AtlasError) -> bool:
    """Whether a write answered with `exc` may still be running on Atlas: no answer came, or a
    gateway gave up waiting for Atlas (502, 504). A 412, a 503 or 429 (refused at the door) and a
    refused connection mean it is not."""
    return isinstance(exc, OutcomeUnknown) or exc.status in (502, 504)


def _never_sent(exc: Exception) -> bool:
    """A connection refused or not made in time: the request never left this machine."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return isinstance(exc, requests.ConnectionError) and (
        "NewConnectionError" in text or "ConnectionRefusedError" in text or "Connection refused" in text
    )


def _gone(doc: dict | None) -> bool:
    return doc is None or bool(doc.get("_deleted"))


def _json_or_empty(response: requests.Response) -> dict:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {"_items": body}


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
