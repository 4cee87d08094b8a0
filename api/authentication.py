"""`Authorization: Bearer <token>` with a personal token (`api.tokens`).

A failed authentication is logged with the client's address and why (never the token), and
counted per client address: past the `failed_auth` rate (REST_FRAMEWORK's
DEFAULT_THROTTLE_RATES) that address is answered 429 without the token being looked at."""

from __future__ import annotations

import logging

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.throttling import SimpleRateThrottle

from . import tokens

logger = logging.getLogger("api.auth")


class FailedAuthThrottle(SimpleRateThrottle):
    """Counts failed authentications per client address (REMOTE_ADDR, or X-Forwarded-For behind
    NUM_PROXIES trusted proxies): only failures are recorded, by `failed`."""

    scope = "failed_auth"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def exhausted(self, request) -> bool:
        self.key = self.get_cache_key(request, None)
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        return len(self.history) >= self.num_requests

    def failed(self, request) -> None:
        if not hasattr(self, "history"):
            self.exhausted(request)
        self.history.insert(0, self.now)
        self.cache.set(self.key, self.history, self.duration)


class BearerTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None  # no token offered: DRF answers 401 not_authenticated
        throttle = FailedAuthThrottle()
        if throttle.exhausted(request):
            logger.warning(
                "API authentication from %s refused: too many failures", throttle.get_ident(request)
            )
            raise exceptions.Throttled(throttle.wait())
        if len(header) != 2:
            self._fail(request, throttle, "malformed Authorization header")
        try:
            token = header[1].decode("ascii")
        except UnicodeError:
            self._fail(request, throttle, "malformed Authorization header")
        row, why = tokens.authenticate(token)
        if row is None:
            self._fail(request, throttle, why)
        return row.user, row

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'

    @staticmethod
    def _fail(request, throttle: FailedAuthThrottle, why: str) -> None:
        throttle.failed(request)
        logger.warning("API authentication from %s failed: %s", throttle.get_ident(request), why)
        raise exceptions.AuthenticationFailed("invalid, expired or revoked token", code="invalid_token")
