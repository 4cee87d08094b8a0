"""`SimulatorServer`: a simulated Atlas served over real HTTP on the loopback interface."""

import threading
from typing import Any

from bson import ObjectId
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import build_app
from .events import EventLog
from .faults import FaultInjector, Faults
from .wsgi import normalize_prefix


class _QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class SimulatorServer:
    """Start a threaded WSGI server for one simulated Atlas in a daemon thread.

    >>> with SimulatorServer("dev", pool_refill_delay=0) as atlas:
    ...     requests.get(atlas.url + "sites")

    Keyword arguments go to `build_app`. `url` ends with a slash and includes the prefix.
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
        self.app = build_app(environment, **build_app_kwargs)
        self.state = self.app.simulator
        prefix = normalize_prefix(build_app_kwargs.get("prefix", ""))
        self.injector = FaultInjector(
            self.app, self.state, prefix=prefix, seed=build_app_kwargs.get("seed", 0)
        )
        handler = WSGIRequestHandler if log_requests else _QuietRequestHandler
        self._server: BaseWSGIServer = make_server(
            host, port, self.injector, threaded=True, request_handler=handler
        )
        self.host = host
        self.port: int = self._server.server_port
        self.url = f"http://{host}:{self.port}{prefix}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"atlas-{environment}-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def environment(self) -> str:
        return self.state.environment

    @property
    def db(self) -> Any:
        """The mongomock database; take `lock` around reads while requests may be running."""
        return self.state.db

    @property
    def lock(self) -> Any:
        return self.state.lock

    @property
    def events(self) -> EventLog:
        return self.state.events

    @property
    def seed_seconds(self) -> float:
        return self.state.seed_seconds

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

    def reset_events(self) -> None:
        self.state.events.clear()

    def run_tasks(self) -> None:
        """Run Atlas's pending background work now (pool refill, provisioning, transitions)."""
        with self.state.lock:
            self.state.tasks.run_now()

    def stop(self) -> None:
        self.state.tasks.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "SimulatorServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SimulatorServer {self.environment} {self.url}>"
