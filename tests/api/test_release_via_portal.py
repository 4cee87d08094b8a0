"""A whole release, DEV → TEST → PROD, driven only by the `portal` command (cli/) in subprocesses,
through the API of a live server, on three simulated Atlas environments and a real worker."""

from __future__ import annotations

import json

import pytest

from api import tokens
from releases.models import AuditEvent
from tests.support import R, T, code_items, configure_environments, member

pytestmark = pytest.mark.slow


@pytest.fixture
def sims(simulator):
    return simulator.all(prod_sites=60, pool_refill_delay=0.2)


def test_whole_release_driven_by_the_portal_command(sims, celery_worker, portal):
    configure_environments(sims, verify=True)
    user = member("ops-lead", "prod-manager")
    _, token = tokens.create(user, "ci")

    def run(*argv, expect: int = 0):
        done = portal(token, *argv)
        assert done.returncode == expect, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    created = json.loads(run("create", "2.8.5", "--commit", R, "--json").stdout)
    assert created["steps"][0]["state"] == "succeeded"
    # Not a terminal and no --yes: refused before anything is launched, as `release launch` refuses.
    assert "stdin is not a terminal" in run("launch", "2.8.5", "--stage", "DEV", expect=1).stderr

    dev = json.loads(run("launch", "2.8.5", "--stage", "DEV", "--yes", "--wait", "--json").stdout)
    assert dev["succeeded"] and [s["number"] for s in dev["steps"]] == [2, 3, 4]
    assert dev["steps"][-1]["counts"]["succeeded"] == dev["steps"][-1]["counts"]["targeted"] == 2
    run("launch", "2.8.5", "--stage", "TEST", "--yes", "--wait")
    run("finalize", "2.8.5", "--tag", "2.8.5", "--commit", T)
    run("launch", "2.8.5", "--stage", "DEV", "--yes", "--wait")
    run("launch", "2.8.5", "--stage", "TEST", "--yes", "--wait")
    # PROD is protected: its name is given, or nothing is launched.
    refused = run("launch", "2.8.5", "--stage", "PROD", "--yes", expect=1)
    assert "[confirmation_refused]" in refused.stderr
    prod = run("launch", "2.8.5", "--stage", "PROD", "--yes", "--confirm-environment", "PROD", "--wait")
    assert "step(s) 12, 13, 14 succeeded" in prod.stdout

    status = json.loads(run("status", "2.8.5", "--json").stdout)
    assert status["state"] == "succeeded"
    assert {s["number"]: s["state"] for s in status["steps"]} == {n: "succeeded" for n in range(1, 15)}
    (item,) = code_items(sims["PROD"], **{"meta.name": "express", "meta.version": "2.8.5"})
    assert item["commit_hash"] == T and item["meta"]["is_current"] is True
    assert json.loads(run("list", "--json").stdout)[0]["state"] == "succeeded"

    # The five stage launches came through the API; the steps each stage went on with, from the worker.
    launches = AuditEvent.objects.filter(action="launch", outcome="ok")
    by_api = launches.filter(channel="api")
    assert [e.step_number for e in by_api.order_by("id")] == [2, 5, 8, 9, 12]
    assert set(by_api.values_list("username", "channel_account")) == {("ops-lead", "ci")}
    assert {e.parameters["via"] for e in launches.exclude(channel="api")} == {"stage"}
    assert AuditEvent.objects.filter(action="finalize", channel="api", channel_account="ci").exists()
    assert token not in celery_worker.output()
