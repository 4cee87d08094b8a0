"""What a site step does to one site: the work its dispatcher runs for each row (an update's PATCH,
a pool site's DELETE), and the outcome recorded for it."""

from __future__ import annotations

from collections.abc import Callable

from atlas.errors import AtlasError, AuthenticationError, Cancelled, NotFound, PossiblyDestroyed, Unavailable

from ..models import SiteResult
from ..states import SiteState
from .context import StepContext, credentials_refused, unreachable
from .dispatch import StopStep, Work
from .recorder import SiteOutcome
from .verify import answered_at


def updater(ctx: StepContext, profile_id: str) -> Work:
    client = ctx.client
    # With verification on, an answered PATCH leaves the site updating at Atlas (not yet done).
    answered = SiteState.UPDATING if ctx.environment.verify else SiteState.SUCCEEDED

    def work(row: SiteResult) -> SiteOutcome:
        etag = row.etag
        if row.state == SiteState.DISPATCHED or row.patched_at is not None:
            # Sent by a worker that died, or PATCHed before and failed verification (a retry):
            # re-read before sending anything (not a no-op on Atlas). A site on the profile is
            # verified again, never updated again: its forward update may still be queued (§3.6).
            site = stopping_on_outage(ctx, lambda: client.get_site(row.site_id))
            if site is None or site.deleted:
                return SiteOutcome(SiteState.SKIPPED, 404, None, "the site no longer exists", 0)
            if site.profile == profile_id:
                message = "already on the release profile"
                if answered == SiteState.UPDATING:
                    message += " (an earlier run's PATCH): verified again, not updated again"
                return SiteOutcome(answered, 200, None, message, 0, patched_at=answered_at(None))
            etag = site.etag
        try:
            result = stopping_on_outage(
                ctx, lambda: client.update_site_profile(row.site_id, profile_id, etag=etag)
            )
        except NotFound as exc:
            return SiteOutcome(SiteState.SKIPPED, exc.status, exc.body, exc.message, 1)
        except Cancelled:
            raise
        except AtlasError as exc:
            return SiteOutcome(SiteState.FAILED, exc.status, exc.body, str(exc), 1)
        message = "already done (re-read)" if result.already else ""
        return SiteOutcome(
            answered,
            result.status,
            result.body or None,
            message,
            result.attempts,
            patched_at=answered_at(result),
        )

    return work


def deleter(ctx: StepContext) -> Work:
    """Every DELETE is preceded by a read of the site (the client does it): see
    `AtlasClient.delete_available_site` for why a stale ETag does not protect a live site."""
    client = ctx.client

    def work(row: SiteResult) -> SiteOutcome:
        try:
            result = stopping_on_outage(ctx, lambda: client.delete_available_site(row.site_id))
        except PossiblyDestroyed as exc:
            return SiteOutcome(SiteState.FAILED, exc.status, exc.body, str(exc), 1, needs_check=True)
        except Cancelled:
            raise
        except AtlasError as exc:
            return SiteOutcome(SiteState.FAILED, exc.status, exc.body, str(exc), 1)
        if result.outcome == "left_pool" and row.state == SiteState.DISPATCHED:
            # An earlier run may have sent this site's DELETE (its answer never recorded): a site
            # found out of the pool now may have lost its instance to it.
            message = (
                f"instance possibly destroyed while the site was {result.site_status!r}: an earlier run's "
                "DELETE of it has no recorded answer and the site is no longer available; check the "
                "site in Atlas"
            )
            return SiteOutcome(SiteState.FAILED, None, None, message, result.attempts, needs_check=True)
        if result.outcome == "left_pool":
            message = f"left the pool before deletion (status {result.site_status!r}): not deleted"
            return SiteOutcome(SiteState.SKIPPED, None, None, message, result.attempts)
        if result.outcome == "already_deleted":
            return SiteOutcome(SiteState.SUCCEEDED, None, None, "already deleted", result.attempts)
        message = (
            "deleted; the removal ran after a conflict (a DELETE was refused after Atlas had queued "
            "the removal, so the deletion was finished with the fresh ETag)"
            if result.after_conflict
            else ""
        )
        return SiteOutcome(SiteState.SUCCEEDED, result.status, None, message, result.attempts)

    return work


def stopping_on_outage(ctx: StepContext, call: Callable):
    """Atlas refusing the credentials or not answering is not about one site: stop the step."""
    try:
        return call()
    except AuthenticationError as exc:
        ctx.halt.set()  # every other thread sends nothing more from now, queued writes included
        raise StopStep(credentials_refused(ctx, exc), sent=False) from None
    except Unavailable as exc:
        raise StopStep(unreachable(ctx, exc), sent=True) from None
