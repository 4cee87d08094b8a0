"""The admin's tests, one file per module of `releases/admin/`: DEV and PROD on simulated Atlas
servers. Users, the runbook and plans come from tests/conftest.py."""

import pytest

from tests.support import configure_environments


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
