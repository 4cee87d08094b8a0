"""The admin's tests, one file per module of `releases/admin/`. Nothing is enqueued: `send_task`
is replaced for every test here (`sent_tasks`), so tests count it."""

import pytest

from tests.support import configure_environments


@pytest.fixture(autouse=True)
def _no_task_sent(sent_tasks):
    return sent_tasks


@pytest.fixture
def dev(simulator):
    """DEV on a simulated Atlas, with the test password."""
    sim = simulator.of("DEV")
    configure_environments({"DEV": sim})
    return sim


@pytest.fixture
def prod(simulator):
    """PROD on a simulated Atlas of 120 sites, with the test password."""
    sim = simulator.of("PROD", sites=120)
    configure_environments({"PROD": sim})
    return sim
