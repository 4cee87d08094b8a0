"""The worker's hold on a running step: a lease it takes, extends and gives up when the step ends,
so that only one worker executes a step at a time and a lapsed one is seen."""

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from ..states import StepState


def lease() -> timedelta:
    return timedelta(seconds=settings.STEP_LEASE_SECONDS)


class WorkerLease:
    """Mixed into `StepRun`: its lease fields (`lease_owner`, `lease_expires_at`), `requested` and
    `activity`, and the cleanup of a step that ends (`flag_unanswered_deletes`, `abandon_rollback`)."""

    def claim(self, owner: str) -> bool:
        """Take the execution lease: only one worker executes a running step at a time."""
        now = timezone.now()
        free = Q(lease_owner="") | Q(lease_expires_at__lt=now) | Q(lease_owner=owner)
        rows = self._running().filter(free).update(lease_owner=owner, lease_expires_at=now + lease())
        if rows == 1:
            self.refresh_from_db()  # what the previous holder left (its result, the request)
        return rows == 1

    def heartbeat(self, owner: str, activity: str | None = None) -> str | None:
        """Extend the lease (and say what the step is doing); return the operator's pending request
        ('' if none), or None if the lease is lost."""
        changes: dict = {"lease_expires_at": timezone.now() + lease()}
        if activity is not None:
            changes["activity"] = activity[:300]
        rows = self._running().filter(lease_owner=owner).update(**changes)
        if rows != 1:
            return None
        return type(self).objects.values_list("requested", flat=True).get(pk=self.pk)

    def finish(self, owner: str, state: str, message: str = "", result: dict | None = None) -> bool:
        """End the worker's hold on the step. An abort the operator asked for while the step was
        stopping for another reason (a threshold pause, a failure) wins: it is never lost."""
        mine = self._running().filter(lease_owner=owner)
        kept = {"result": result} if result is not None else {}
        if state in (StepState.PAUSED, StepState.FAILED) and self._finish_aborted(mine, message, kept):
            return True
        changes = dict(
            state=state, message=message, lease_owner="", lease_expires_at=None, requested="", activity=""
        )
        if state == StepState.SUCCEEDED and self._finish_stopped(mine, changes, message, kept):
            return True
        if state != StepState.PAUSED:
            changes["finished_at"] = timezone.now()
        changes.update(kept)
        rows = mine.update(**changes)
        if rows == 1:
            for key, value in changes.items():
                setattr(self, key, value)
            if state in (StepState.ABORTED, StepState.FAILED):
                self.flag_unanswered_deletes()
                self.abandon_rollback()
        return rows == 1

    def _finish_aborted(self, mine, message: str, kept: dict) -> bool:
        """The step was stopping (paused or failed) while the operator asked for an abort: it aborts."""
        aborted = mine.filter(requested="abort").update(
            state=StepState.ABORTED,
            message=f"aborted by the operator (the step was stopping: {message})"[:4000],
            lease_owner="",
            lease_expires_at=None,
            requested="",
            activity="",
            finished_at=timezone.now(),
            **kept,
        )
        if aborted:
            self.refresh_from_db()
            self.flag_unanswered_deletes()
            self.abandon_rollback()
        return bool(aborted)

    def _finish_stopped(self, mine, changes: dict, message: str, kept: dict) -> bool:
        """A pause or abort asked as the step's last write ended: the step did succeed, but the
        stage stops here rather than launching its next step as if nobody had asked."""
        for asked in ("abort", "pause"):
            stopped = {
                **changes,
                "finished_at": timezone.now(),
                "continue_stage": False,
                "message": f"{message} (the stage stops here: {asked} was asked as the step ended)"[:4000],
                **kept,
            }
            if mine.filter(requested=asked).update(**stopped):
                for key, value in stopped.items():
                    setattr(self, key, value)
                return True
        return False

    def _running(self):
        """This step's row, while it is running."""
        return type(self).objects.filter(pk=self.pk, state=StepState.RUNNING)

    def liveness(self, now=None) -> str:
        """For a running step: '' while a worker holds it, else since when none has."""
        if self.state != StepState.RUNNING:
            return ""
        now = now or timezone.now()
        if self.lease_expires_at and self.lease_expires_at < now:
            local = timezone.localtime(self.lease_expires_at)
            return f"no live worker since {local:%H:%M:%S}: a worker's watchdog will take the step over"
        if not self.lease_owner and self.started_at and self.started_at < now - lease():
            local = timezone.localtime(self.started_at)
            return f"waiting for a worker since {local:%H:%M:%S}: is a worker running on this broker?"
        return ""
