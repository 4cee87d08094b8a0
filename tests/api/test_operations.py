"""Operations through the API: the launch confirmation is bound to what the preview showed (as the
admin's), the two-person rule refuses an approval from the requester's own token, environments
change under `environment set`'s rules, the audit trail reads back with filters, and no token
appears in any log or audit row."""

from __future__ import annotations

import io
import logging

import pytest

from api import tokens
from releases import services
from releases.models import AuditEvent, Environment, LaunchRequest
from tests.admin_helpers import mark_done
from tests.support import R, configure_environments, member, tasks_not_sent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dev(simulator):
    configure_environments({"DEV": simulator.of("DEV")})


@pytest.fixture
def lead():
    return member("ops-lead", "prod-manager")


@pytest.fixture
def plan(lead, dev):
    return services.create_plan("2.8.5", commit=R, user=lead)


def test_a_launch_takes_the_confirmation_its_preview_gave(api, plan, lead):
    client, other = api(lead), api(member("second", "prod-manager"))
    preview = client.get("plans/2.8.5/steps/4/preview/").json()
    assert preview["confirmation"] and preview["previews"][0]["batches"]
    mark_done(plan, 2, 3)

    with tasks_not_sent() as sent:
        stolen = other.post("plans/2.8.5/launch/", {"step": 4, "confirmation": preview["confirmation"]})
        forged = client.post("plans/2.8.5/launch/", {"step": 4, "confirmation": preview["confirmation"][:-2]})
        missing = client.post("plans/2.8.5/launch/", {"step": 4})
        assert sent.call_count == 0
        launched = client.post("plans/2.8.5/launch/", {"step": 4, "confirmation": preview["confirmation"]})
        assert sent.call_count == 1

    assert (stolen.status_code, stolen.json()["code"]) == (409, "confirmation_refused")
    assert "another launch" in stolen.json()["detail"]
    assert (forged.status_code, forged.json()["code"]) == (409, "confirmation_refused")
    assert (missing.status_code, missing.json()["code"]) == (400, "invalid")
    assert launched.status_code == 202, launched.text
    step = plan.steps.get(number=4)
    batches = preview["previews"][0]["batches"]
    assert step.state == "running" and step.confirmed_targets == {b["name"]: b["count"] for b in batches}
    refusals = AuditEvent.objects.filter(action="launch", outcome="refused")
    assert set(refusals.values_list("username", "channel")) == {("second", "api"), ("ops-lead", "api")}


def test_an_approval_from_the_requesters_own_token_is_refused(api, plan, lead):
    Environment.objects.filter(name="DEV").update(two_person=True)
    requester, laptop = api(lead, "ci"), api(lead, "laptop")
    approver = api(member("second", "prod-manager"), "desk")
    with tasks_not_sent() as sent:
        asked = requester.post("plans/2.8.5/launch/", {"stage": "DEV", "yes": True})
        assert asked.status_code == 202 and asked.json()["request"]["state"] == "pending"
        request_id = asked.json()["request"]["id"]

        own = laptop.post("plans/2.8.5/approve/", {"step": 2, "request": request_id})
        assert (own.status_code, own.json()["code"]) == (403, "own_request")
        assert sent.call_count == 0 and LaunchRequest.objects.get().state == "pending"

        approved = approver.post("plans/2.8.5/approve/", {"step": 2, "request": request_id})
        assert approved.status_code == 202, approved.text
        assert sent.call_count == 1
    assert approved.json()["step"]["state"] == "running"
    assert LaunchRequest.objects.get().requested_account == "ci"
    rows = AuditEvent.objects.filter(action__in=["launch_request", "approve"]).order_by("id")
    assert list(rows.values_list("action", "outcome", "username", "channel", "channel_account")) == [
        ("launch_request", "ok", "ops-lead", "api", "ci"),
        ("approve", "refused", "ops-lead", "api", "laptop"),
        ("approve", "ok", "second", "api", "desk"),
    ]


def test_environments_change_under_the_rules_of_environment_set(api, dev):
    manager, prod_manager = api(member("rm", "release-manager")), api(member("pm", "prod-manager"))
    refused = manager.patch("environments/PROD/", {"parallelism": 2})
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")
    changed = prod_manager.patch("environments/dev/", {"parallelism": 3, "failure_threshold": "10%"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["changes"]["parallelism"] == [4, 3]
    assert Environment.objects.get(name="DEV").failure_threshold_percent == 10
    Environment.objects.filter(name="DEV").update(two_person=True)
    weaker = prod_manager.patch("environments/DEV/", {"two_person": False})
    assert weaker.status_code in (403, 409) and "reserved to superusers" in weaker.json()["detail"]
    shown = manager.get("environments/DEV/").json()
    assert shown["parallelism"] == 3 and "password" not in {k for k in shown if k != "password_env"}
    event = AuditEvent.objects.get(action="environment_set", outcome="ok")
    assert (event.username, event.channel, event.message) == ("pm", "api", "via api")


def test_the_audit_trail_reads_back_filtered_and_paginated(api, plan, lead):
    client = api(lead)
    for _ in range(3):
        client.post("plans/2.8.5/pause/")  # refused: nothing runs
    page = client.get("audit/", action="pause", channel="api", page_size=2).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    row = page["results"][0]
    assert (row["username"], row["outcome"], row["release"], row["channel"], row["account"]) == (
        "ops-lead", "refused", "2.8.5", "api", "ci",
    )  # fmt: skip
    assert client.get("audit/", since="2000-01-01", user="nobody").json()["count"] == 0
    assert client.get("audit/", since="yesterday").json()["code"] == "invalid"


def test_no_token_in_any_log_or_audit_row(api, plan, lead, caplog, capfd):
    client = api(lead)
    wrong = api(member("second", "prod-manager"))
    wrong_token, wrong.token = wrong.token, wrong.token[:-6] + "xxxxxx"
    with caplog.at_level(logging.DEBUG), tasks_not_sent():
        client.get("plans/2.8.5/")
        client.post("plans/2.8.5/launch/", {"stage": "DEV", "yes": True})
        client.post("plans/2.8.5/pause/")
        client.post("plans/2.8.5/launch/", {"step": 12, "yes": True})
        wrong.get("plans/")
        client.get("plans/nope/")
    logged = caplog.text + "".join(capfd.readouterr())
    assert "API authentication from 127.0.0.1 failed" in logged
    for token in (client.token, wrong_token, wrong.token):
        assert token not in logged and token[4:16] not in logged
        secret = token[4:]
        for row in AuditEvent.objects.all():
            assert secret not in f"{row.parameters} {row.message} {row.reason} {row.channel_account}"


class Terminal(io.StringIO):
    """What an operator types, as a terminal."""

    def isatty(self) -> bool:
        return True


def test_the_portal_command_shows_the_blast_radius_and_asks(live_server, plan, lead, monkeypatch):
    from tests.api.test_cli import cli

    _, token = tokens.create(lead, "laptop")
    monkeypatch.setenv("PORTAL_URL", live_server.url)
    monkeypatch.setenv("PORTAL_TOKEN", token)
    out, err = io.StringIO(), io.StringIO()
    with tasks_not_sent() as sent:
        declined = cli.main(
            ["launch", "2.8.5", "--stage", "DEV"], stdin=Terminal("n\n"), stdout=out, stderr=err
        )
        assert declined == 1 and "not confirmed: nothing was launched" in err.getvalue()
        assert sent.call_count == 0
        accepted = cli.main(
            ["launch", "2.8.5", "--stage", "DEV"], stdin=Terminal("y\n"), stdout=out, stderr=err
        )
        assert accepted == 0, err.getvalue()
        assert sent.call_count == 1
    assert "Step 4 [DEV]" in err.getvalue() and "Proceed? [y/N]" in err.getvalue()
    assert "Launched 2.8.5 stage DEV from step 2" in out.getvalue()
    step4 = plan.steps.get(number=4)
    assert step4.confirmed_targets and sum(step4.confirmed_targets.values()) == 2  # webcentral, homepage
    assert plan.steps.get(number=2).state == "running"


def test_refusals_carry_a_stable_code(api, plan, lead):
    client = api(lead)
    assert client.get("plans/9.9.9/").json() == {"code": "no_plan", "detail": "no release '9.9.9'"}
    assert client.get("plans/2.8.5/steps/15/").json()["code"] == "no_step"
    rollback = client.post("plans/2.8.5/steps/4/rollback/", {"failed": True})
    assert (rollback.status_code, rollback.json()["code"]) == (409, "rollback_refused")
    assert "a rollback starts once it is paused or has ended" in rollback.json()["detail"]
    skip = client.post("plans/2.8.5/steps/7/skip/", {"reason": "no"})
    assert (skip.status_code, skip.json()["code"]) == (409, "skip_refused")
    invalid = client.post("plans/2.8.5/launch/", {"step": 4, "stage": "DEV", "yes": True})
    assert (invalid.status_code, invalid.json()["code"]) == (400, "invalid")
    assert AuditEvent.objects.filter(action="rollback", outcome="refused", channel="api").exists()
