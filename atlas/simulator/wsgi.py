"""WSGI plumbing around the Eve app: the URL prefix, and one request at a time.

mongomock is not thread-safe, so `SerializedWSGI` runs each request under the simulator's lock
and buffers the whole response inside it; whatever wraps it (the fault injector) can then sleep
without holding the lock, so parallel clients really overlap.
"""

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import SimulatorState

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]


class BufferedResponse:
    """A WSGI response read to the end: status line, headers and body."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    def of(cls, app: WSGIApp, environ: dict) -> "BufferedResponse":
        captured: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"], captured["headers"] = status, list(headers)
            return written.append

        iterable = app(environ, start_response)
        try:
            written.extend(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        return cls(captured["status"], captured["headers"], b"".join(written))

    def send(self, start_response: StartResponse) -> list[bytes]:
        start_response(self.status, self.headers)
        return [self.body]


def normalize_prefix(prefix: str) -> str:
    """'atlas/' → '/atlas'; '' or '/' → ''."""
    prefix = prefix.strip("/")
    return f"/{prefix}" if prefix else ""


def json_error(code: int, reason: str, message: str) -> BufferedResponse:
    body = f'{{"_status": "ERR", "_error": {{"code": {code}, "message": "{message}"}}}}'.encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return BufferedResponse(f"{code} {reason}", headers, body)


class SerializedWSGI:
    """Mounts the app under `prefix` (like mod_wsgi's SCRIPT_NAME) and serialises requests.

    After each request, still under the lock, Atlas's background tasks get the chance to run
    (immediately when the pool refill delay is 0).
    """

    def __init__(self, app: WSGIApp, state: "SimulatorState", prefix: str = "") -> None:
        self.app = app
        self.state = state
        self.prefix = normalize_prefix(prefix)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if not self._mount(environ):
            return json_error(404, "NOT FOUND", "The requested URL was not found on the server.").send(
                start_response
            )
        with self.state.lock:
            if self.state.stopped:  # a request the server abandoned when it stopped
                response = json_error(503, "SERVICE UNAVAILABLE", "Atlas has stopped.")
            else:
                response = BufferedResponse.of(self.app, environ)
                self.state.tasks.after_request()
        return response.send(start_response)

    def _mount(self, environ: dict) -> bool:
        if not self.prefix:
            return True
        path = environ.get("PATH_INFO", "")
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return False
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
        environ["PATH_INFO"] = path[len(self.prefix) :] or "/"
        return True
