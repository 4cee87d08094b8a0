"""The portal's HTTP API, as this command needs it: one `requests.Session`, the token in one
header, explicit timeouts, and errors raised with the API's stable `code`."""

from __future__ import annotations

import time
from urllib.parse import urljoin, urlsplit

import requests

from . import __version__

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class Usage(Exception):
    """Bad usage or configuration (exit 2)."""


class Refused(Exception):
    """The portal refused (exit 1): `code` is the API's stable code, the message its detail."""

    def __init__(self, detail: str, code: str = "", status: int = 0):
        super().__init__(detail)
        self.code, self.status = code, status


def check_url(url: str, *, allow_http: bool) -> str:
    if not url:
        raise Usage("no portal URL: set PORTAL_URL or pass --url")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise Usage(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS and not allow_http:
        raise Usage(
            f"refusing plain http:// to {parts.hostname}: the token would travel unencrypted "
            "(use https://, or pass --allow-http if you must)"
        )
    return url.rstrip("/") + "/"


class Portal:
    def __init__(self, url: str, token: str, *, timeout: tuple[float, float] = (10, 180)):
        if not token:
            raise Usage("no token: set PORTAL_TOKEN or pass --token (create one in the admin, or with "
                        "`manage.py token create`)")  # fmt: skip
        self.base = urljoin(url, "api/v1/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"portal-cli/{__version__}",
            }
        )

    def get(self, path: str, **params) -> dict:
        params = {key: value for key, value in params.items() if value is not None}
        # Reads are safe to repeat: a dropped connection or a restarting web process is retried.
        for attempt in range(3):
            try:
                return self._answer(self.session.get(self._url(path), params=params, timeout=self.timeout))
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == 2:
                    raise Refused(f"the portal did not answer: {type(exc).__name__}", "unreachable") from None
            except Refused as exc:
                if exc.status not in (502, 503, 504) or attempt == 2:
                    raise
            time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def post(self, path: str, body: dict | None = None) -> dict:
        return self._send("POST", path, body)

    def patch(self, path: str, body: dict) -> dict:
        return self._send("PATCH", path, body)

    def pages(self, path: str, **params) -> list:
        """Every row of a paginated list."""
        rows, page = [], self.get(path, **params)
        while True:
            rows += page["results"]
            if not page.get("next"):
                return rows
            page = self._answer(self.session.get(page["next"], timeout=self.timeout))

    def _send(self, method: str, path: str, body) -> dict:
        # Never retried: the portal may have acted on a request whose answer was lost.
        try:
            response = self.session.request(method, self._url(path), json=body or {}, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Refused(
                f"the portal did not answer ({type(exc).__name__}): look with `portal status` before "
                "trying again",
                "unreachable",
            ) from None
        return self._answer(response)

    def _url(self, path: str) -> str:
        return urljoin(self.base, path.lstrip("/"))

    @staticmethod
    def _answer(response: requests.Response):
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 400 and body is not None:
            return body
        if isinstance(body, dict) and "code" in body:
            detail = body.get("detail") or body["code"]
            if response.status_code == 401:
                detail = f"the portal refused the token: {detail}"
            raise Refused(detail, body["code"], response.status_code)
        raise Refused(f"HTTP {response.status_code} from {response.url}", "http_error", response.status_code)
