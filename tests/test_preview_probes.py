"""A preview costs at most one refused login per environment (issue 17, item 5).

Atlas binds to LDAP on every request (atlas-api.md §2), so each refused request counts towards
locking the service account. Judged from the simulator's own request log (every request with its
status) and its `auth_failed` events: one `release preview` of the plan, or one view of PROD's
stage confirmation, asks Atlas once with a wrong password; a second one within a minute asks
nothing and says so; a fixed password variable is asked at once, and accepted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from releases import reports, roles, services
from releases.connectivity import refusal_cache, refusal_key
from releases.models import Environment, ReleasePlan, StepRun
from releases.states import StepState
from tests.admin_helpers import mark_done, url
from tests.support import R, configure_environments, make_user

ROOT = Path(__file__).resolve().parent.parent
TEST_PASSWORD = "test-probe-Pw-51"
PROD_PASSWORD = "prod-probe-Pw-51"
WRONG = "wrong-Pw-probe-9d"
REMEMBERED = "not asked again for a minute, so the service account is not locked out"


def refused(sim) -> int:
    """Requests Atlas refused (401), from the simulator's request log."""
    return sum(1 for *_, status in sim.injector.requests if status == 401)


def forget(name: str, password: str) -> None:
    """Drop a refusal a run of this test within the last minute may have left (same pk, port)."""
    refusal_cache().delete(refusal_key(Environment.objects.get(name=name), password))


@pytest.fixture
def test_atlas(simulator):
    sim = simulator("test", password=TEST_PASSWORD)
    sim.injector.record = True
    return sim


@pytest.fixture
def release(test_atlas, process_env):
    """`release(*args, **env)`: `manage.py release …` as its own process, on a plan 2.8.5 whose TEST
    is the simulator; DEV and PROD have no password variable, so they send nothing."""
    configure_environments({"TEST": test_atlas})
    services.create_plan("2.8.5", commit=R, user=make_user("ops-lead"))
    forget("TEST", WRONG)
    test_atlas.injector.requests.clear()

    def run(*args: str, **overrides: str | None) -> subprocess.CompletedProcess:
        values = {"ATLAS_DEV_PASSWORD": None, "ATLAS_PROD_PASSWORD": None, **overrides}
        env = {k: v for k, v in process_env(**values).items() if v is not None}
        return subprocess.run(
            [sys.executable, "manage.py", "release", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip

    return run


def test_one_preview_of_the_plan_asks_test_once_with_a_wrong_password(release, test_atlas):
    result = release("preview", "2.8.5", ATLAS_TEST_PASSWORD=WRONG)

    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "Atlas TEST refused the credentials" in result.stderr, result.stderr
    assert WRONG not in result.stderr + result.stdout
    # Five TEST steps (5, 6, 9, 10, 11): one refused probe, no read of a step after it.
    assert refused(test_atlas) == 1, test_atlas.injector.requests
    assert len(test_atlas.events.of_kind("auth_failed")) == 1


def test_a_second_preview_within_a_minute_asks_nothing_and_says_so_until_the_variable_is_fixed(
    release, test_atlas
):
    first = release("preview", "2.8.5", ATLAS_TEST_PASSWORD=WRONG)
    assert first.returncode == 1 and refused(test_atlas) == 1
    test_atlas.injector.requests.clear()

    second = release("preview", "2.8.5", ATLAS_TEST_PASSWORD=WRONG)

    assert second.returncode == 1 and "Traceback" not in second.stderr + second.stdout
    assert test_atlas.injector.requests == [], "a request reached Atlas TEST"
    assert len(test_atlas.events.of_kind("auth_failed")) == 1
    for output in (second.stdout, second.stderr):  # each step's lines, and the command's refusal
        assert "Atlas TEST refused these credentials" in output and REMEMBERED in output, output
        assert "s ago" in output and "ATLAS_TEST_PASSWORD" in output
    assert WRONG not in second.stderr + second.stdout

    fixed = release("preview", "2.8.5", "--json", ATLAS_TEST_PASSWORD=TEST_PASSWORD)

    # DEV and PROD have no password here (refused without a request); TEST is asked and accepts.
    previews = {p["number"]: p for p in json.loads(fixed.stdout)}
    for number in (5, 6, 9, 10, 11):
        assert "error" not in previews[number] or "action" in previews[number], previews[number]
        assert "refused" not in previews[number].get("error", "")
    assert previews[6]["batches"] and "credentials" not in previews[6]
    probes = [(m, s) for m, path, _, _, s in test_atlas.injector.requests if m != "GET"]
    assert len(probes) == 1 and probes[0][1] in (404, 412), probes  # past authentication
    assert refused(test_atlas) == 0 and len(test_atlas.events.of_kind("auth_failed")) == 1


# -- the admin's launch confirmation ---------------------------------------------------------------


@pytest.fixture
def prod_atlas(simulator, monkeypatch):
    sim = simulator("prod", password=PROD_PASSWORD, sites=60)
    sim.injector.record = True
    monkeypatch.setenv("ATLAS_PROD_PASSWORD", WRONG)
    return sim


@pytest.mark.django_db
def test_the_prod_stage_confirmation_asks_once_then_remembers_the_refusal(client, prod_atlas):
    configure_environments({"PROD": prod_atlas})
    plan = services.create_plan("2.8.5", commit=R, user=make_user("ops-lead"))
    mark_done(plan, *range(2, 12))
    forget("PROD", WRONG)
    manager = make_user("prod-lead", permissions=())
    roles.ensure_groups()
    manager.groups.add(Group.objects.get(name=roles.PROD_RELEASE_MANAGERS))
    client.force_login(manager)
    prod_atlas.injector.requests.clear()

    page = client.get(url("launch", plan, 12, query="?stage=1"))

    assert page.status_code == 200
    previews = page.context["radius"]["previews"]
    assert [p["number"] for p in previews] == [12, 13, 14]
    assert refused(prod_atlas) == 1, prod_atlas.injector.requests
    fresh = {"refused": True, "remembered": False, "seconds_ago": None}
    assert all(p["credentials"] == fresh for p in previews)
    assert "Atlas PROD refused the credentials" in page.content.decode()

    again = client.get(url("launch", plan, 12, query="?stage=1"))

    assert again.status_code == 200
    assert refused(prod_atlas) == 1 and len(prod_atlas.events.of_kind("auth_failed")) == 1
    html = again.content.decode()
    assert "Atlas PROD refused these credentials" in html and REMEMBERED in html
    assert 'class="errornote credentials-refused"' in html
    assert all(p["credentials"]["remembered"] for p in again.context["radius"]["previews"])
    assert WRONG not in html
    assert StepRun.objects.get(plan=plan, number=12).state == StepState.PENDING


# -- steps that write nothing more are not asked about ---------------------------------------------


@pytest.mark.django_db
def test_done_code_steps_and_frozen_site_steps_send_no_credentials_probe(test_atlas, monkeypatch):
    configure_environments({"TEST": test_atlas})
    monkeypatch.setenv("ATLAS_TEST_PASSWORD", WRONG)
    for other in ("DEV", "PROD"):  # refused without a request: only TEST is looked at
        monkeypatch.delenv(f"ATLAS_{other}_PASSWORD")
    plan = services.create_plan("2.8.5", commit=R, user=make_user("ops-lead"))
    forget("TEST", WRONG)
    StepRun.objects.filter(plan=plan, number__in=(5, 9)).update(state=StepState.SUCCEEDED)
    # Site steps that ran: their targets are frozen in the database, a relaunch sends those.
    StepRun.objects.filter(plan=plan, number__in=(6, 10, 11)).update(
        state=StepState.FAILED, result={"snapshot": True, "batches": []}
    )
    test_atlas.injector.requests.clear()

    previews = {p["number"]: p for p in reports.preview(ReleasePlan.objects.get(pk=plan.pk))}

    assert [m for m, *_ in test_atlas.injector.requests if m != "GET"] == []  # public reads only
    assert refused(test_atlas) == 0
    assert all(previews[n]["frozen"] for n in (6, 10, 11))
    assert previews[5]["action"] == "create" and "error" not in previews[5]
