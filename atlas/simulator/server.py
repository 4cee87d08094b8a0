"""`SimulatorServer`: a simulated Atlas served over real HTTP on the loopback interface.

Served by waitress rather than werkzeug's development server: werkzeug answers every request
with `Connection: close`, so each request costs a new TCP connection and a new thread, which
made the simulator, not the client, the limit of a benchmark. Real Atlas sits behind Apache with
keep-alive, so persistent connections are also the faithful choice.
"""

import logging
import threading
from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from .app import build_app
from .faults import FaultInjector, Faults
from .pages import PAGES_PATH, SitePages
from .wsgi import StartResponse, WSGIApp, normalize_prefix

# Request threads are started on demand up to this many: a request never waits for a free
# thread (latencies and held requests sleep inside the request), short of this many at once.
MAX_THREADS = 512
# Open connections (idle keep-alive ones included) before waitress stops accepting.
CONNECTION_LIMIT = 2048
# An idle keep-alive connection is closed after this long: long enough that no test or
# benchmark ever races a client reusing a connection the server is closing.
IDLE_TIMEOUT_SECONDS = 3600

# For a process that serves only simulators (`manage.py atlas_simulator`): how long a thread may
# keep the GIL while another waits for it. A request whose latency sleep has ended waits for the
# GIL behind a request running Eve; at CPython's default (5 ms) a 20 ms write latency became
# 26 ms on average (33 ms at the 90th percentile) with 8 writers, and 38 ms with 32; at 1 ms it is
# 21 ms. Shorter costs more CPU in GIL hand-overs for little more.
SWITCH_INTERVAL_SECONDS = 0.001

log = logging.getLogger(__name__)
# waitress's own messages, when requests are not logged: only warnings and errors (a client
# that hung up mid-request is routine here, e.g. a client's read timeout).
quiet_log = logging.getLogger(f"{__name__}.waitress")
quiet_log.setLevel(logging.WARNING)


class _GrowingDispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool, but grown by one thread whenever a task would otherwise wait
    (where waitress logs "Task queue depth"), up to `max_threads`: a simulator starts in a few
    threads, yet its many slow requests never queue behind each other."""

    def __init__(self, max_threads: int) -> None:
        super().__init__()
        self.max_threads = max_threads

    def add_task(self, task: Any) -> None:
        with self.lock:
            self.queue.append(task)
            self.queue_cv.notify()
            running = len(self.threads) - self.stop_count
            idle = running - self.active_count
            if len(self.queue) <= idle or self.stop_count:
                return
            if running >= self.max_threads:
                self.queue_logger.warning("Task queue depth is %d", len(self.queue) - idle)
                return
            # set_thread_count would take self.lock again: start the thread here.
            thread_no = 0
            while thread_no in self.threads:
                thread_no += 1
            self.threads.add(thread_no)
            self.active_count += 1
            self.start_new_thread(self.handler_thread, thread_no)

    def stop(self) -> None:
        """Let every thread end (idle ones now, busy ones after their request); drop queued
        tasks. Never waits: a request may be sleeping for minutes."""
        self.set_thread_count(0)
        with self.lock:
            pending = list(self.queue)
            self.queue.clear()
        for task in pending:
            task.cancel()


class _Channel(HTTPChannel):
    """A connection, logging through its server's logger (quiet unless requests are logged)."""

    @property
    def logger(self) -> logging.Logger:  # type: ignore[override]
        return self.server.logger


class _Server(TcpWSGIServer):
    """waitress's TCP server that can be closed from another thread, connections and all."""

    channel_class = _Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False
        super().__init__(*args, **kwargs)

    def pull_trigger(self, thunk: Any = None) -> None:
        # Request threads still running after `close_everything` must not write to the
        # trigger's closed pipe: its file descriptor number may already be reused.
        with self._trigger_lock:
            if not self._trigger_closed:
                self.trigger.pull_trigger(thunk)

    def close_everything(self) -> None:
        """In the loop thread: close the listening socket and every connection (a request
        being handled gets no answer), then leave the loop."""
        for dispatcher in list(self._map.values()):
            if isinstance(dispatcher, HTTPChannel):
                dispatcher.handle_close()  # marks it disconnected for its request thread
            elif dispatcher is self:
                wasyncore.dispatcher.close(self)  # the listening socket, not yet the trigger
        self.trigger.del_channel()  # the map is now empty: the loop ends

    def close_trigger(self) -> None:
        with self._trigger_lock:
            if not self._trigger_closed:
                self._trigger_closed = True
                self.trigger.close()


class _AccessLog:
    """One line per request, as werkzeug's server logged them (`log_requests=True`)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        def logged_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            path = environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING"):
                path += "?" + environ["QUERY_STRING"]
            log.info(
                '%s "%s %s %s" %s',
                environ.get("REMOTE_ADDR", "-"),
                environ.get("REQUEST_METHOD"),
                path,
                environ.get("SERVER_PROTOCOL"),
                status.split(" ", 1)[0],
            )
            return start_response(status, headers, exc_info)

        return self.app(environ, logged_start_response)


class _FromState:
    """A read-only attribute of the server that is its SimulatorState's."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, server: Any, owner: type | None = None) -> Any:
        return self if server is None else getattr(server.state, self.name)

    def __set__(self, server: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is the simulator state's: set it there")


class SimulatorServer:
    """Start a keep-alive, thread-pooled WSGI server for one simulated Atlas in a daemon thread.

    >>> with SimulatorServer("dev", pool_refill_delay=0) as atlas:
    ...     requests.get(atlas.url + "sites")

    Keyword arguments go to `build_app`. `url` ends with a slash and includes the prefix.
    `site_url` is the environment's site base URL: the sites' pages, served by the same server
    (`<site_url>/<path>`, the homepage at `site_url` itself).
    `stop()` makes Atlas gone at once: the port refuses connections and every open connection
    is closed, including ones whose request is still being handled (it gets no answer).
    """

    def __init__(
        self,
        environment: str,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        log_requests: bool = False,
        **build_app_kwargs: Any,
    ) -> None:
        prefix = normalize_prefix(build_app_kwargs.get("prefix", ""))
        if prefix == PAGES_PATH:
            raise ValueError(f"the prefix {prefix!r} is where the sites' pages are served")
        self.app = build_app(environment, **build_app_kwargs)
        self.state = self.app.simulator
        self.injector = FaultInjector(
            self.app, self.state, prefix=prefix, seed=build_app_kwargs.get("seed", 0)
        )
        served = SitePages(self.injector, self.state)
        self._server = self._listen(served, host, port, log_requests)
        self.host = host
        self.port: int = int(self._server.effective_port)
        self.url = f"http://{host}:{self.port}{prefix}/"
        self.site_url = f"http://{host}:{self.port}{PAGES_PATH}"
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._server.run, name=f"atlas-{environment}-{self.port}", daemon=True
        )
        self._thread.start()

    def _listen(self, served: Any, host: str, port: int, log_requests: bool) -> _Server:
        """The waitress server, bound to `host:port` (not yet serving), with its thread pool."""
        self._dispatcher = _GrowingDispatcher(MAX_THREADS)
        if not log_requests:
            self._dispatcher.logger = self._dispatcher.queue_logger = quiet_log
        self._dispatcher.set_thread_count(4)
        adjustments = Adjustments(
            host=host,
            port=port,
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=IDLE_TIMEOUT_SECONDS,
            asyncore_use_poll=True,  # select() fails past file descriptor 1024
            # No proxy in front: pass X-Forwarded-* through untouched, as werkzeug's server did,
            # without waitress's header-scrubbing middleware on every request.
            clear_untrusted_proxy_headers=False,
            ident="Atlas simulator",
        )
        try:
            server = _Server(
                _AccessLog(served) if log_requests else served,
                map={},
                dispatcher=self._dispatcher,
                adj=adjustments,
            )
        except BaseException:
            self._dispatcher.stop()
            raise
        if not log_requests:
            server.logger = quiet_log
        return server

    # Read from the state the hooks and tasks share (one truth): take `lock` around reads of the
    # mongomock `db` while requests may be running.
    environment = _FromState()
    db = _FromState()
    lock = _FromState()
    events = _FromState()
    seed_seconds = _FromState()

    def set_faults(self, **faults: Any) -> None:
        """Replace every fault setting (see `Faults` for the names); no argument clears them."""
        self.injector.set(Faults(**faults))

    @property
    def max_writes_in_flight(self) -> int:
        """The most writes (non-GET requests) this server handled at once since it started."""
        return self.injector.max_writes_in_flight

    def touch_site(self, site_id: str | ObjectId) -> bool:
        """Make the site's current `_etag` stale, as a write by Atlas's own tasks would."""
        return self.state.touch_site(site_id)

    # -- the sites and Atlas's queues (atlas-api.md §3.6) ---------------------------------

    def break_on_update(self, *paths: str, report: str = "error") -> None:
        """The sites at `paths` break when their next update onto code they never ran ends:
        their page answers 500, and `drush atlas-statistics` writes `report`: "error" (an
        error-level status), "clean" (only the page shows it) or "none" (drush cannot run)."""
        with self.state.lock:
            self.state.drupal.break_on_update(list(paths), report)

    def deny_drush(self, *usernames: str) -> None:
        """These accounts lack the drush role: `POST /drush/<id>/execute` answers 403."""
        with self.state.lock:
            self.state.drush_denied.update(usernames)

    def report_statistics(self, site_id: str | ObjectId) -> bool:
        """The site writes its statistics report now, as its cron would."""
        with self.state.lock:
            return self.state.drupal.report(ObjectId(site_id), source="cron")

    def wait_for_updates(self, timeout: float = 30) -> bool:
        """Until the update queue is empty and no update is running (False after `timeout`)."""
        return self.state.drupal.updates.wait_idle(timeout)

    def wait_for_commands(self, timeout: float = 30) -> bool:
        """Until the command queue (drush) is empty and idle (False after `timeout`)."""
        return self.state.drupal.commands.wait_idle(timeout)

    def reset_events(self) -> None:
        self.state.events.clear()

    def run_tasks(self) -> None:
        """Run Atlas's pending background work now (pool refill, provisioning, transitions)."""
        with self.state.lock:
            self.state.tasks.run_now()

    def stop(self) -> None:
        """Atlas goes away: no more connections, every open one closed, nothing more applied.

        Returns promptly even while requests sleep (latency, slow answers): their threads are
        abandoned (daemons), and what they would still apply is refused.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.state.stop()
        self._server.pull_trigger(self._server.close_everything)
        self._thread.join(timeout=5)
        if not self._thread.is_alive() and self._server._map:
            self._server.close_everything()  # the loop had already ended (an error): close here
        self._server.close_trigger()
        self._dispatcher.stop()

    def __enter__(self) -> "SimulatorServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SimulatorServer {self.environment} {self.url}>"
