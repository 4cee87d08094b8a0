"""The API's tests run against pytest-django's live server over real HTTP: `api(user)` is a client
holding a fresh personal token of that user; `portal(...)` runs the `portal` command (cli/) in a
subprocess against the live server, as CI or a laptop would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.core.cache import cache

from api import tokens

CLI_SOURCE = Path(__file__).resolve().parents[2] / "cli" / "src"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Throttle counters live in the cache: one test's failures must not throttle the next."""
    cache.clear()
    yield
    cache.clear()


@dataclass
class Api:
    base: str
    token: str
    name: str

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.request(method, self.base + path, headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **params) -> requests.Response:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict | None = None) -> requests.Response:
        return self.request("POST", path, json=body or {})

    def patch(self, path: str, body: dict) -> requests.Response:
        return self.request("PATCH", path, json=body)


@pytest.fixture
def api(live_server):
    """`api(user, name="ci", read_only=False)`: a client with a new token of `user`."""

    def make(user, name: str = "ci", **kwargs) -> Api:
        _, token = tokens.create(user, name, **kwargs)
        return Api(f"{live_server.url}/api/v1/", token, name)

    return make


@pytest.fixture
def portal(live_server):
    """`portal(token, "status", "2.8.5", "--json")`: the `portal` command; returns the process."""

    def run(token: str, *argv: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
        environment = {
            **os.environ,
            "PYTHONPATH": str(CLI_SOURCE),
            "PORTAL_URL": live_server.url,
            "PORTAL_TOKEN": token,
            **env,
        }
        return subprocess.run(
            [sys.executable, "-m", "portal_cli", *argv],
            env=environment,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    return run
