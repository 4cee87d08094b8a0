"""Freeze a site step's targets: every batch read from Atlas and persisted, page by page.

The batches are read in order on a thread of their own while the step writes: batch 1 is frozen
(all its targets read and stored) and written while batch 2 is still being read, and no batch is
written before its own snapshot is complete (atlas-api.md §0 rule 6, per selector). Pages go to
the database as they arrive, so memory does not grow with the number of sites. A site matched by
two batches belongs to the first (the database keeps one row per step and site).
"""

from __future__ import annotations

import threading

from django.db import connection, transaction

from atlas.client import SITE_PROJECTION
from atlas.selectors import exclude_profile
from atlas.types import Site

from ..db import insert_new, with_database
from ..models import SiteResult, StepRun, UpdateGroup
from ..states import SiteState, StepState
from .context import LeaseLost, StepContext


class NoSelectors(Exception):
    pass


class Snapshot:
    """Reads the step's batches on a background thread; `wait_frozen(i)` returns batch i's summary
    once every target of it is stored, re-raising whatever stopped the reading."""

    def __init__(self, ctx: StepContext, profile_id: str, *, only_available: bool) -> None:
        self.ctx = ctx
        self.profile_id = profile_id
        self.only_available = only_available
        self.groups = list(UpdateGroup.objects.for_step(ctx.step).enabled().order_by("position", "id"))
        if not self.groups:
            raise NoSelectors(f"no enabled update group for step {ctx.step.number} on {ctx.environment}")
        self.frozen: list[dict] = []
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_all, name=f"snapshot-{ctx.step.pk}", daemon=True)

    @property
    def batch_count(self) -> int:
        return len(self.groups)

    def start(self) -> Snapshot:
        self._thread.start()
        return self

    def wait_frozen(self, index: int) -> dict:
        with self._changed:
            while len(self.frozen) <= index and self.error is None:
                self._changed.wait(timeout=0.25)
                self.ctx.beat()  # keeps watching for a lost lease while the reads go on
            if len(self.frozen) > index:
                return self.frozen[index]
            raise self.error

    @property
    def complete(self) -> bool:
        with self._changed:
            return len(self.frozen) == len(self.groups)

    def frozen_sites(self) -> int:
        with self._changed:
            return sum(batch["count"] for batch in self.frozen)

    def finish(self) -> list[dict]:
        """Wait for the remaining batches to be frozen (reads only, no writes); return them all."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        if len(self.frozen) != len(self.groups):
            raise LeaseLost(f"step {self.ctx.step.pk}: snapshot incomplete")
        return list(self.frozen)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    # -- the reading thread -------------------------------------------------------------------

    def _read_all(self) -> None:
        try:
            with connection.execute_wrapper(self.ctx.queries):
                self._read_batches()
        except BaseException as exc:  # handed to the step's thread by wait_frozen
            with self._changed:
                self.error = exc
                self._changed.notify_all()
        finally:
            connection.close()  # this thread's own connection

    def _read_batches(self) -> None:
        for index, group in enumerate(self.groups):
            summary = self._read_batch(index, group)
            if summary is None:
                # Stopped part-way: never hand out a partial list as the whole snapshot.
                raise LeaseLost(f"step {self.ctx.step.pk}: snapshot stopped before batch {index + 1}")
            with self._changed:
                self.frozen.append(summary)
                self._changed.notify_all()

    def _read_batch(self, index: int, group: UpdateGroup) -> dict | None:
        where = exclude_profile(group.checked_selector(), self.profile_id)
        read = 0
        for page in self.ctx.client.iter_pages("sites", where, SITE_PROJECTION):
            if self._stop.is_set() or self.ctx.lost:
                return None
            read += len(page)
            rows = [self._row(Site.from_document(doc)) for doc in page]
            with_database(lambda rows=rows: self._store(rows, index, group.name), "storing the snapshot")
        count = with_database(
            lambda: SiteResult.objects.filter(step=self.ctx.step, batch_index=index).count(),
            "counting the snapshot",
        )
        return {"name": group.name, "where": where, "count": count, "overlap": read - count}

    def _store(self, rows: list[dict], index: int, batch: str) -> None:
        with transaction.atomic():
            mine = StepRun.objects.filter(
                pk=self.ctx.step.pk, lease_owner=self.ctx.owner, state=StepState.RUNNING
            )
            if not mine.select_for_update().exists():
                raise LeaseLost(f"step {self.ctx.step.pk}: lease lost while storing the snapshot")
            # A site already stored (matched by an earlier batch) keeps its first batch.
            insert_new(SiteResult, rows, step_id=self.ctx.step.pk, batch_index=index, batch_name=batch)

    def _row(self, site: Site) -> dict:
        row = {
            "site_id": site.id,
            "sid": site.sid,
            "path": site.path,
            "status": site.status,
            "update_group": site.update_group,
            "etag": site.etag,
            "previous_profile": site.profile or "",  # what a rollback puts it back on
            "state": SiteState.PENDING.value,
            "message": "",
        }
        if self.only_available and site.status != "available":
            # Deleting anything but an available site would destroy a real instance.
            row["state"] = SiteState.SKIPPED.value
            row["message"] = f"not deleted: status is {site.status!r}, not 'available'"
        return row
