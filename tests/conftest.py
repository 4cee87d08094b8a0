"""Fixtures the test files share: the simulated Atlas, the portal's users one per role, the
runbook, and a release plan brought to the step a test needs.

The users are `releases/roles.py`'s demo accounts (the ones `make run` creates): `viewer`,
`release_manager`, `prod_manager` and `prod_approver`, each a staff account whose only permissions
are its role's group. The demo `admin` is pytest-django's `admin_user` (`admin_client`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command

from atlas.simulator import SimulatorServer
from tests.support import R, member, tasks_not_sent

# -- Atlas simulator ---------------------------------------------------------------------------


class Simulators:
    """Simulated Atlas servers on loopback, all stopped at teardown (the `simulator` fixture).

    Unless told otherwise the pools refill synchronously (`pool_refill_delay=0`), so tests do not
    wait.
    """

    def __init__(self) -> None:
        self.started: list[SimulatorServer] = []

    def __call__(self, environment: str = "dev", **kwargs: Any) -> SimulatorServer:
        """`simulator("dev", sites=..., seed=..., ...)`: takes `SimulatorServer`'s arguments."""
        kwargs.setdefault("pool_refill_delay", 0)
        server = SimulatorServer(environment, **kwargs)
        self.started.append(server)
        return server

    def of(self, name: str, sites: int | None = None, **kwargs: Any) -> SimulatorServer:
        """`simulator.of("PROD", sites=300)`: the Atlas of environment `name`, with that
        environment's test password (ATLAS_PROD_PASSWORD), as `configure_environments` expects."""
        return self(name.lower(), sites=sites, password=os.environ[f"ATLAS_{name}_PASSWORD"], **kwargs)

    def all(self, prod_sites: int = 400, **kwargs: Any) -> dict[str, SimulatorServer]:
        """DEV, TEST and PROD (with `prod_sites` sites), by name."""
        return {
            name: self.of(name, sites=prod_sites if name == "PROD" else None, **kwargs)
            for name in ("DEV", "TEST", "PROD")
        }

    def stop(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def simulator() -> Iterator[Simulators]:
    """Start simulated Atlas servers: `simulator("dev", ...)`, `simulator.of("PROD", sites=300)`,
    `simulator.all(prod_sites=60)`; all are stopped at teardown."""
    servers = Simulators()
    yield servers
    servers.stop()


# -- users, one per role -----------------------------------------------------------------------


def demo_account(username: str):
    """The demo account `username` of `roles.DEMO_ACCOUNTS`, in its role's group."""
    return member(username, username)


@pytest.fixture
def viewer(db):
    return demo_account("viewer")


@pytest.fixture
def release_manager(db):
    return demo_account("release-manager")


@pytest.fixture
def prod_manager(db):
    return demo_account("prod-manager")


@pytest.fixture
def prod_approver(db):
    """The second PROD release manager: the other person of the two-person rule."""
    return demo_account("prod-approver")


# -- the runbook and a plan --------------------------------------------------------------------


@pytest.fixture
def runbook(db) -> None:
    """The environments, steps and update groups of `loadrunbook`."""
    call_command("loadrunbook", verbosity=0)


@pytest.fixture
def operator(runbook, prod_manager):
    """Who runs the release in a test: a PROD release manager, so every operation is allowed."""
    return prod_manager


@pytest.fixture
def plan(operator):
    """Release 2.8.5 as `release create` makes it: step 1 recorded, steps 2-14 pending."""
    from releases import services

    return services.create_plan("2.8.5", commit=R, user=operator)


@pytest.fixture
def plan_at(plan) -> Callable:
    """`plan_at(12)`: the `plan` with every step before 12 marked succeeded (the rows only: nothing
    ran at Atlas), so step 12 is the next to launch."""
    from tests.admin_helpers import mark_done

    def at(number: int):
        mark_done(plan, *range(2, number))
        return plan

    return at


@pytest.fixture
def sent_tasks():
    """Launches hand nothing to the broker; yields the mock of `send_task`, so a test can count
    what would have been sent."""
    with tasks_not_sent() as send:
        yield send
