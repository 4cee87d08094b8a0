"""Typed Atlas errors. Each says whether retrying can help and names the environment and URL.

No error ever carries credentials: the client builds them from the response only.
"""

from __future__ import annotations


class AtlasError(Exception):
    """Base class. `retryable` tells the caller whether sending the same request again can help."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        environment: str = "",
        url: str = "",
        status: int | None = None,
        body: object = None,
    ) -> None:
        self.message = message
        self.environment = environment
        self.url = url
        self.status = status
        self.body = body
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"Atlas {self.environment}" if self.environment else "Atlas"
        status = f" HTTP {self.status}" if self.status else ""
        return f"{where}{status} at {self.url}: {self.message}" if self.url else f"{where}: {self.message}"


class AuthenticationError(AtlasError):
    """401 or 403: Atlas refused the credentials. Atlas binds to LDAP on every request, so a
    caller must stop at once rather than retry (repeated failures can lock the account)."""


class DrushRoleMissing(AuthenticationError):
    """403 on `POST /drush/<id>/execute`: the credentials are good, but the account lacks the
    `drush` role, so Atlas will not run drush (fresh statistics reports) for it."""


class NotFound(AtlasError):
    """404: no such item (a soft-deleted item also answers 404, with its document)."""


class Conflict(AtlasError):
    """409: Atlas refused the write; `message` is Atlas's own explanation."""


class PreconditionFailed(AtlasError):
    """412 (stale ETag) or 428 (missing If-Match): re-read the item and try again."""

    retryable = True


class ValidationFailed(AtlasError):
    """422: Atlas's schema refused the payload; `issues` is Atlas's `_issues` as sent."""

    def __init__(self, message: str, *, issues: object = None, **kwargs) -> None:
        self.issues = issues or {}
        super().__init__(message, **kwargs)


class BadRequest(AtlasError):
    """400: a malformed query (bad `where` JSON, a banned operator) or a hook exception."""


class Unavailable(AtlasError):
    """5xx, 429, a refused connection or a timeout: Atlas may answer later."""

    retryable = True


class OutcomeUnknown(Unavailable):
    """A write was sent but no answer came back: it may or may not have been applied.

    Callers must re-read the item before sending the write again.
    """


class PossiblyDestroyed(AtlasError):
    """A DELETE of a pool site was answered 412/428/5xx (or not at all) and the site is no longer
    `available`: Atlas queues the instance removal before its ETag check (atlas-api.md §3.4), so
    the instance of a site that left the pool may have been destroyed. An operator must look."""


class Cancelled(AtlasError):
    """The caller stopped (a pause, an abort, a lost lease) before this write was sent: nothing
    was sent by this call's last attempt; an earlier attempt's outcome may still be unknown."""


class InvalidSelector(ValueError):
    """A `where` selector that must not reach Atlas. The message names what is wrong."""
