"""Celery tasks: thin wrappers that load a row by primary key and call the engine."""

from __future__ import annotations

import os
import socket

from celery import shared_task

# watchdog: imported for its worker_ready handler, which starts the lease watchdog in every worker.
from . import engine, services, watchdog  # noqa: F401


def _owner(task_id: str | None) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or '-'}"


@shared_task(bind=True, acks_late=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def run_step(self, step_id: int) -> str | None:
    owner = _owner(self.request.id)
    ran = engine.execute(step_id, owner, task_id=self.request.id)
    if ran is None:
        return None
    step, outcome = ran
    return engine.with_database(lambda: services.complete_step(step, owner, outcome), "finishing the step")
