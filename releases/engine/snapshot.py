"""Snapshot a site step's targets at launch: every batch read from Atlas, then persisted."""

from __future__ import annotations

from django.db import transaction

from atlas.selectors import exclude_profile

from ..models import SiteResult, UpdateGroup
from ..states import SiteState
from .context import StepContext


class NoSelectors(Exception):
    pass


def take_snapshot(ctx: StepContext, profile_id: str, *, only_available: bool) -> None:
    """Read every batch (selector AND `code.profile != release item`) before anything is written."""
    groups = list(
        UpdateGroup.objects.filter(
            environment=ctx.environment, step_number=ctx.step.number, enabled=True
        ).order_by("position", "id")
    )
    if not groups:
        raise NoSelectors(f"no enabled update group for step {ctx.step.number} on {ctx.environment}")
    rows, batches, seen = [], [], set()
    for index, group in enumerate(groups):
        where = exclude_profile(group.selector(), profile_id)
        sites = ctx.client.list_sites(where)
        fresh = [s for s in sites if s.id not in seen]
        seen.update(s.id for s in fresh)
        batches.append(
            {"name": group.name, "where": where, "count": len(fresh), "overlap": len(sites) - len(fresh)}
        )
        rows.extend(_row(ctx, site, index, group.name, only_available) for site in fresh)
        ctx.beat()
    ctx.result.update(snapshot=True, profile_id=profile_id, batches=batches)
    with transaction.atomic():
        SiteResult.objects.bulk_create(rows, batch_size=500)
        ctx.save_result()


def _row(ctx: StepContext, site, index: int, batch: str, only_available: bool) -> SiteResult:
    row = SiteResult(
        step=ctx.step,
        site_id=site.id,
        sid=site.sid,
        path=site.path,
        status=site.status,
        update_group=site.update_group,
        batch_index=index,
        batch_name=batch,
        etag=site.etag,
    )
    if only_available and site.status != "available":
        # Deleting anything but an available site would destroy a real instance.
        row.state = SiteState.SKIPPED
        row.message = f"not deleted: status is {site.status!r}, not 'available'"
    return row
