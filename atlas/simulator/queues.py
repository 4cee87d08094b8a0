"""Atlas's Celery queues (`update_queue`, `command_queue`), reduced to what a client can observe.

A `WorkQueue` runs its tasks in arrival order on W worker threads. A task has a `start` and a
`finish`, each run under the simulator's lock, and takes `seconds` between them without
holding it (a `site_update`'s rsync and drush, a drush command over SSH): with W workers at
most W tasks are between their start and their finish, and the rest wait their turn.
"""

import logging
import threading
from collections import deque
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Task(Protocol):
    seconds: float

    def start(self) -> bool:
        """Under the simulator's lock. False: nothing to do, skip the wait and the finish."""
        ...

    def finish(self) -> None:
        """Under the simulator's lock, `seconds` after `start`."""
        ...


class WorkQueue:
    """A FIFO of tasks and the workers that run them. Workers start with the first task."""

    def __init__(self, name: str, lock: threading.RLock, *, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"{name}: at least one worker is needed, not {workers}")
        self.name = name
        self.lock = lock
        self.workers = workers
        self._tasks: deque[Task] = deque()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._stopped = threading.Event()

    @property
    def waiting(self) -> int:
        """Tasks queued and not yet started."""
        with self._ready:
            return len(self._tasks)

    @property
    def running(self) -> int:
        """Tasks started and not yet finished."""
        with self._ready:
            return self._running

    def put(self, task: Task) -> None:
        with self._ready:
            if self._stopped.is_set():
                return
            self._tasks.append(task)
            if len(self._threads) < self.workers:
                self._start_worker()
            self._ready.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Until no task is queued or running (True), or `timeout` seconds (False)."""
        with self._ready:
            return self._ready.wait_for(lambda: not self._tasks and not self._running, timeout=timeout)

    def stop(self) -> None:
        """Drop what is queued; a task under way is not finished. Never waits for a worker."""
        self._stopped.set()
        with self._ready:
            self._tasks.clear()
            self._ready.notify_all()

    def _start_worker(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _next(self) -> Task | None:
        with self._ready:
            self._ready.wait_for(lambda: self._tasks or self._stopped.is_set())
            if self._stopped.is_set():
                return None
            self._running += 1
            return self._tasks.popleft()

    def _done(self) -> None:
        with self._ready:
            self._running -= 1
            self._ready.notify_all()

    def _work(self) -> None:
        while (task := self._next()) is not None:
            try:
                self._run(task)
            except Exception:  # a worker survives its task, as a Celery worker does
                log.exception("%s: task %r failed", self.name, task)
            finally:
                self._done()

    def _run(self, task: Any) -> None:
        with self.lock:
            if self._stopped.is_set() or not task.start():
                return
        if task.seconds > 0 and self._stopped.wait(task.seconds):
            return  # the simulator stopped meanwhile: Atlas is gone
        with self.lock:
            if not self._stopped.is_set():
                task.finish()
