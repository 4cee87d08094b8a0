import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from atlas.simulator import SimulatorServer

# -- Atlas simulator ---------------------------------------------------------------------------


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorServer]]:
    """Start simulated Atlas servers on loopback; all are stopped at teardown.

    `simulator("dev", sites=..., seed=..., ...)` takes `SimulatorServer`'s arguments. Unless
    told otherwise the pool refills synchronously (`pool_refill_delay=0`), so tests do not wait.
    """
    started: list[SimulatorServer] = []

    def start(environment: str = "dev", **kwargs: Any) -> SimulatorServer:
        kwargs.setdefault("pool_refill_delay", 0)
        server = SimulatorServer(environment, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sims() -> Iterator[Callable[..., SimulatorServer]]:
    """`sims("PROD", sites=300)`: a simulated Atlas with the test password of that environment,
    pools refilled at once; stopped at teardown."""
    started: list[SimulatorServer] = []

    def make(environment: str, sites: int | None = None) -> SimulatorServer:
        server = SimulatorServer(
            environment.lower(),
            sites=sites,
            password=os.environ[f"ATLAS_{environment}_PASSWORD"],
            pool_refill_delay=0,
        )
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
