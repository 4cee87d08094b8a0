"""How the Atlas client writes: a write is re-read before it is sent again (and not at all when
the re-read shows it applied), and a pool site's DELETE never destroys a site that left the pool
(atlas-api.md §3.4). `AtlasClient` gets these methods from `Writes`."""

from __future__ import annotations

import logging
from collections.abc import Callable

import requests

from .errors import AtlasError, Conflict, OutcomeUnknown, PossiblyDestroyed, PreconditionFailed, Unavailable
from .transport import json_or_empty
from .types import DeleteResult, WriteResult

logger = logging.getLogger("atlas.client")  # the client's log, as before the writes had a module

# What a re-read says about a write that may or may not have landed: (applied?, fresh ETag).
Reread = Callable[[], tuple[bool, str]]


class Writes:
    """Needs `Transport` (`_send`, `_retry_reads`, `_get_item`, `_sleep_backoff`, `_url`)."""

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
            body = json_or_empty(response)
            return WriteResult(
                str(body.get("_id", "")),
                str(body.get("_etag", "")),
                response.status_code,
                attempts,
                body=body,
            )

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


def _gone(doc: dict | None) -> bool:
    return doc is None or bool(doc.get("_deleted"))
