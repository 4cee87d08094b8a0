"""Fault injection in front of a simulated Atlas: latency, 503s, slow answers, ETag races.

Sleeps happen outside the simulator's lock, so N parallel clients overlap their latencies.
"""

import json
import random
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .wsgi import BufferedResponse, StartResponse, WSGIApp, normalize_prefix

if TYPE_CHECKING:
    from .state import SimulatorState

READ_METHODS = ("GET", "HEAD", "OPTIONS")
UNAVAILABLE_BODY = (
    b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
    b"<title>503 Service Unavailable</title>\n</head><body>\n<h1>Service Unavailable</h1>\n"
    b"<p>The server is temporarily unable to service your request.</p>\n</body></html>\n"
)

TOO_LONG_BODY = (
    b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
    b"<title>414 Request-URI Too Long</title>\n</head><body>\n<h1>Request-URI Too Long</h1>\n"
    b"<p>The requested URL's length exceeds the capacity limit for this server.<br />\n</p>\n"
    b"</body></html>\n"
)


def _request_line_length(environ: dict) -> int:
    """The length of the path and query string as sent (still percent-encoded)."""
    path = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not path:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
    return len(path)


@dataclass(frozen=True)
class Faults:
    """What to inject; every field off by default.

    - `write_latency_ms`: fixed sleep before every non-GET request.
    - `fail_rate`: fraction of requests answered 503 without reaching Atlas (nothing applied).
    - `slow_ms`/`slow_rate`: fraction of requests whose answer is held back `slow_ms` after
      Atlas handled them (the write is applied: the client's "outcome unknown" case).
    - `etag_race_rate`: fraction of PATCH/DELETE of a site preceded by another writer
      touching that site, so the client's If-Match is stale (412).
    - `fail_next`: the next N requests (any method) are answered 503, whatever the rate.
    - `fail_status`: the status those failures answer: 503 (the proxy refused at the door) by
      default; 502/504 are a gateway giving up, where the client cannot tell whether Atlas got it.
    - `fail_methods`: when given, only requests with these methods fail (`fail_next`, `fail_rate`).
    - `pool_take_rate`: fraction of writes on whose arrival Atlas takes one random pool site
      other than the one the request names (status → `installed`, as an install or a restore
      does): the churn that makes a snapshot of available sites go stale.
    - `take_before_delete_rate`: fraction of site DELETEs on whose arrival Atlas takes that very
      site first: the worst case of the churn, a DELETE racing an install.
    - `cascade_delay_ms`: the code→site cascade of a code PATCH sleeps this long per site
      (without holding the simulator's lock), as Atlas's is slow: the item is stored first.
    - `max_url_length`: a request whose path and query string are longer is refused with 414,
      as Apache does past its `LimitRequestLine` (8190 by default); Atlas's own GET of a drush
      item's query fails the same way. 0: no limit.
    """

    write_latency_ms: float = 0
    fail_rate: float = 0.0
    slow_ms: float = 0
    slow_rate: float = 0.0
    etag_race_rate: float = 0.0
    fail_next: int | None = None
    fail_status: int = 503
    fail_methods: tuple[str, ...] = ()  # only these methods fail (all when empty)
    pool_take_rate: float = 0.0
    take_before_delete_rate: float = 0.0
    cascade_delay_ms: float = 0
    max_url_length: int = 0


class FaultInjector:
    """WSGI middleware applying `Faults` with a seeded RNG."""

    def __init__(self, app: WSGIApp, state: "SimulatorState", *, prefix: str = "", seed: int = 0) -> None:
        self.app = app
        self.state = state
        self.faults = Faults()
        self._fail_next = 0
        self._rng = random.Random(f"faults-{seed}")
        self._lock = threading.Lock()
        self._site_item = re.compile(rf"^{re.escape(normalize_prefix(prefix))}/sites/([0-9a-fA-F]{{24}})/?$")
        # Writes being handled right now, and the most seen at once (for parallelism checks).
        self.writes_in_flight = 0
        self.max_writes_in_flight = 0
        # Atlas's own clock for benchmarks: [method, path, arrived, answered, status] per request,
        # kept only when asked for (`record=True`), served at /_simulator/requests.
        self.record = False
        self.requests: list[list] = []
        self._log_path = f"{normalize_prefix(prefix)}/_simulator/requests"

    def set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._fail_next = faults.fail_next or 0
        self.state.cascade_delay = faults.cascade_delay_ms / 1000
        self.state.max_url_length = faults.max_url_length

    def _roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _should_fail(self) -> bool:
        with self._lock:
            if self._fail_next > 0:
                self._fail_next -= 1
                return True
        return self._roll(self.faults.fail_rate)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self._log_path:
            return self._serve_log(environ, start_response)
        arrived = time.time()
        response = self._handle(environ, start_response)
        if self.record:
            status = int(response.status.split()[0])
            entry = [environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), arrived, time.time(), status]
            with self._lock:
                self.requests.append(entry)
        return response.send(start_response)

    def _serve_log(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        """GET: the requests recorded so far; DELETE: forget them (simulator only, not Atlas)."""
        with self._lock:
            body = json.dumps(self.requests).encode()
            if environ.get("REQUEST_METHOD") == "DELETE":
                self.requests = []
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        return BufferedResponse("200 OK", headers, body).send(start_response)

    def _handle(self, environ: dict, start_response: StartResponse) -> BufferedResponse:
        faults = self.faults
        method = environ.get("REQUEST_METHOD", "GET")
        write = method not in READ_METHODS
        if write:
            self._count_write(+1)
        try:
            if write and faults.write_latency_ms > 0:
                time.sleep(faults.write_latency_ms / 1000)
            if self.state.stopped:  # the server stopped while this request slept: Atlas is gone
                return self._unavailable()
            if faults.max_url_length and _request_line_length(environ) > faults.max_url_length:
                return self._too_long()
            if (not faults.fail_methods or method in faults.fail_methods) and self._should_fail():
                return self._unavailable(faults.fail_status)
            self._maybe_churn(environ, method, faults)
            self._maybe_race(environ, method, faults)
            response = BufferedResponse.of(self.app, environ)
        finally:
            if write:
                self._count_write(-1)
        if faults.slow_ms > 0 and self._roll(faults.slow_rate):
            time.sleep(faults.slow_ms / 1000)
        return response

    def _count_write(self, delta: int) -> None:
        with self._lock:
            self.writes_in_flight += delta
            self.max_writes_in_flight = max(self.max_writes_in_flight, self.writes_in_flight)

    def _site_id(self, environ: dict) -> str | None:
        match = self._site_item.match(environ.get("PATH_INFO", ""))
        return match.group(1) if match else None

    def _maybe_churn(self, environ: dict, method: str, faults: Faults) -> None:
        target = self._site_id(environ)
        if method == "DELETE" and target and self._roll(faults.take_before_delete_rate):
            self.state.take_pool_site(target)
        elif method not in READ_METHODS and self._roll(faults.pool_take_rate):
            self.state.take_pool_site(exclude=target)

    def _maybe_race(self, environ: dict, method: str, faults: Faults) -> None:
        if method not in ("PATCH", "DELETE"):
            return
        target = self._site_id(environ)
        if target and self._roll(faults.etag_race_rate):
            self.state.touch_site(target)

    @staticmethod
    def _too_long() -> BufferedResponse:
        headers = [
            ("Content-Type", "text/html; charset=iso-8859-1"),
            ("Content-Length", str(len(TOO_LONG_BODY))),
        ]
        return BufferedResponse("414 Request-URI Too Long", headers, TOO_LONG_BODY)

    @staticmethod
    def _unavailable(status: int = 503) -> BufferedResponse:
        # What the proxy in front of Atlas answers: HTML, not an Eve envelope.
        headers = [
            ("Content-Type", "text/html; charset=iso-8859-1"),
            ("Content-Length", str(len(UNAVAILABLE_BODY))),
            ("Retry-After", "1"),
        ]
        reason = {502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Service Unavailable")
        return BufferedResponse(f"{status} {reason}", headers, UNAVAILABLE_BODY)
