"""Pick up steps whose worker died: a running step whose lease lapsed is enqueued again.

Every worker runs this check in a background thread (started when the worker is ready), so a
live worker resumes a dead worker's step within about a minute, whatever the broker's redelivery
timeout. Duplicate enqueues are harmless: only one worker can claim the step's lease.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import current_app
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

logger = logging.getLogger(__name__)
_stop = threading.Event()


def requeue_stalled() -> int:
    from .models import StepRun
    from .states import StepState

    now = timezone.now()
    # A launched step nobody has claimed yet gets a grace period: its task may still be queued.
    grace = timedelta(seconds=settings.STEP_LEASE_SECONDS * 1.5)
    lapsed = Q(lease_owner="", started_at__lt=now - grace) | Q(lease_expires_at__lt=now)
    stalled = list(StepRun.objects.filter(lapsed, state=StepState.RUNNING).values_list("pk", flat=True))
    for step_id in stalled:
        logger.warning("step %s has no live worker; enqueueing it again", step_id)
        current_app.send_task("releases.tasks.run_step", args=(step_id,))
    return len(stalled)


def _loop() -> None:
    while not _stop.wait(settings.WATCHDOG_INTERVAL_SECONDS):
        try:
            close_old_connections()
            requeue_stalled()
        except Exception:  # keep watching: a database hiccup must not end the watchdog
            logger.exception("watchdog check failed")
        finally:
            close_old_connections()


@worker_ready.connect
def _start(**kwargs) -> None:
    _stop.clear()
    threading.Thread(target=_loop, name="step-watchdog", daemon=True).start()


@worker_shutdown.connect
def _shutdown(**kwargs) -> None:
    _stop.set()
