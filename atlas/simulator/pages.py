"""The sites' pages, served beside the simulated Atlas by the same server.

Real sites answer at `BASE_URLS[ENV] + '/' + path` (the homepage at the bare base URL), from the
web servers, not from Atlas: so here they sit outside Atlas's URL prefix, at `PAGES_PATH`, and
no fault meant for Atlas (latency, 503s) applies to them. The query string is ignored, as a
cache-busting parameter is by Drupal.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import events as ev
from .wsgi import BufferedResponse, StartResponse, WSGIApp

if TYPE_CHECKING:
    from .state import SimulatorState

PAGES_PATH = "/web"
GENERATOR = "Drupal 7 (http://drupal.org)"
_BODIES = {
    200: b"<!DOCTYPE html>\n<html><head><title>Express</title></head><body>Welcome</body></html>\n",
    404: b"<!DOCTYPE html>\n<html><head><title>Page not found</title></head><body>Not found</body></html>\n",
    # What Drupal 7 prints when it cannot bootstrap.
    500: b"The website encountered an unexpected error. Please try again later.",
}
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


class SitePages:
    """WSGI middleware: requests under `PAGES_PATH` get the site's page; the rest go to `app`."""

    def __init__(self, app: WSGIApp, state: "SimulatorState") -> None:
        self.app = app
        self.state = state

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != PAGES_PATH and not path.startswith(PAGES_PATH + "/"):
            return self.app(environ, start_response)
        return self._page(environ, path[len(PAGES_PATH) :]).send(start_response)

    def _page(self, environ: dict, site_path: str) -> BufferedResponse:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _response(405, b"")
        with self.state.lock:
            if self.state.stopped:
                return _response(503, b"")
            status, site_id = self.state.drupal.page(site_path)
        self.state.events.record(ev.PAGE_GET, site_id or "", path=site_path.strip("/"), status=status)
        # A site that cannot bootstrap answers before Drupal could add its header. (waitress
        # sends no body to a HEAD.)
        return _response(status, _BODIES[status], drupal=status != 500)


def _response(status: int, body: bytes, *, drupal: bool = False) -> BufferedResponse:
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-cache, must-revalidate"),
    ]
    if drupal:
        headers.append(("X-Generator", GENERATOR))
    return BufferedResponse(f"{status} {_REASONS[status]}", headers, body)
