"""How the Atlas client sends one request and reads its answer: the pooled `requests.Session`,
the `(connect, read)` timeouts, bounded retries of reads with backoff, and the typed error
(atlas/errors.py) each failure or error answer means. `AtlasClient` gets it from `Transport`."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
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
    PreconditionFailed,
    Unavailable,
    ValidationFailed,
)


class Transport:
    """One Atlas environment's connection; thread-safe for concurrent requests."""

    def _init_transport(self, base_url: str, auth: tuple[str, str], *, verify: bool, pool_size: int) -> None:
        """The session and what the client knows of Atlas's answers so far. Wants the client's
        `environment`, `timeout`, `max_attempts`, `backoff` and `backoff_cap` set."""
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        parts = urlsplit(self.base_url)
        # Never show credentials someone put into the URL itself.
        self.safe_base_url = parts._replace(
            netloc=parts.hostname + (f":{parts.port}" if parts.port else "")
        ).geturl()
        self.session = requests.Session()
        self.session.auth = auth
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
            lambda: json_or_empty(self._send("GET", path, params=params, timeout=self.timeout))
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
        body = json_or_empty(response)
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


def _never_sent(exc: Exception) -> bool:
    """A connection refused or not made in time: the request never left this machine."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return isinstance(exc, requests.ConnectionError) and (
        "NewConnectionError" in text or "ConnectionRefusedError" in text or "Connection refused" in text
    )


def json_or_empty(response: requests.Response) -> dict:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {"_items": body}
