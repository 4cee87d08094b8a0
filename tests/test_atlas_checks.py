"""Atlas configuration checks at start-up (atlas.W001–W004) and the admin's "Test connection"
action on environments: the client's side-effect-free credentials check over real HTTP against
the simulator, reported per environment, audited, and never showing a secret."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from django.contrib.messages import get_messages
from django.core.checks import run_checks
from django.core.management import call_command
from django.urls import reverse

from atlas.simulator import SimulatorServer
from atlas.simulator.events import AUTH_FAILED
from releases.models import AuditEvent, Environment
from tests.support import make_user

pytestmark = pytest.mark.django_db
DEV_PASSWORD = "dev-secret-Zq7"  # conftest's TEST_ENV


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def environments():
    call_command("loadrunbook", verbosity=0)
    return {env.name: env for env in Environment.objects.all()}


def atlas_warnings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in run_checks(tags=["atlas"]):
        found.setdefault(message.id, []).append(message.msg)
    return found


# -- system checks -----------------------------------------------------------------------------------


def test_a_complete_configuration_gives_no_atlas_warnings(environments):
    assert atlas_warnings() == {}


def test_an_environment_without_a_url_is_reported(environments):
    Environment.objects.filter(name="TEST").update(api_url="")

    assert atlas_warnings() == {"atlas.W001": ["Environment TEST has no Atlas API URL."]}


def test_an_unset_password_variable_is_reported_by_name_only(environments, monkeypatch):
    monkeypatch.delenv("ATLAS_PROD_PASSWORD")

    warnings = atlas_warnings()

    assert list(warnings) == ["atlas.W002"]
    assert warnings["atlas.W002"] == [
        "PROD: the password variable ATLAS_PROD_PASSWORD is not set in the environment"
    ]


def test_an_unset_slack_variable_is_reported(environments, monkeypatch):
    monkeypatch.delenv("ATLAS_DEV_SLACK_WEBHOOK", raising=False)
    Environment.objects.filter(name="DEV").update(slack_webhook_env="ATLAS_DEV_SLACK_WEBHOOK")

    warnings = atlas_warnings()

    assert list(warnings) == ["atlas.W003"]
    assert "ATLAS_DEV_SLACK_WEBHOOK is not set" in warnings["atlas.W003"][0]


def test_a_broker_that_does_not_answer_is_reported_without_its_password(environments, settings):
    settings.CELERY_BROKER_URL = f"redis://:broker-secret-Zq7@127.0.0.1:{_closed_port()}/12"

    warnings = atlas_warnings()

    assert list(warnings) == ["atlas.W004"]
    assert "does not answer" in warnings["atlas.W004"][0]
    assert "broker-secret" not in warnings["atlas.W004"][0]


def test_the_checks_print_at_start_up(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "true", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "CELERY_BROKER_URL": f"filesystem://{tmp_path / 'broker'}", "ATLAS_DEV_PASSWORD": "x",
           "ATLAS_TEST_PASSWORD": "y"}  # fmt: skip
    for command in (["migrate"], ["loadrunbook"]):
        subprocess.run([sys.executable, "manage.py", *command], env=env, check=True, capture_output=True)

    result = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True)

    assert result.returncode == 0
    assert "(atlas.W002) PROD: the password variable ATLAS_PROD_PASSWORD is not set" in result.stderr
    assert "ATLAS_DEV_PASSWORD" not in result.stderr


# -- Test connection -----------------------------------------------------------------------------------


@pytest.fixture
def dev_atlas(environments):
    server = SimulatorServer("dev", password=DEV_PASSWORD, pool_refill_delay=0)
    Environment.objects.filter(name="DEV").update(api_url=server.url, username="release-portal")
    yield server
    server.stop()


def run_test_connection(client, user, *names: str):
    client.force_login(user)
    pks = [Environment.objects.get(name=name).pk for name in names]
    response = client.post(
        reverse("admin:releases_environment_changelist"),
        {"action": "test_connection", "_selected_action": pks},
        follow=True,
    )
    assert response.status_code == 200
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)], response.content.decode()


def test_connection_reports_accepted_credentials_and_changes_nothing(client, dev_atlas):
    before = len(dev_atlas.events.snapshot())

    messages, _ = run_test_connection(client, make_user(), "DEV")

    assert messages == [
        ("success", f"DEV: Atlas at {dev_atlas.url} accepted the credentials of release-portal "
                    "(password from ATLAS_DEV_PASSWORD) and runs drush for it (verification's reports)")
    ]  # fmt: skip
    # No side effect on any site: the drush role is checked by running the portal's own
    # verification item on a query that matches none (DEV verifies: Test connection says so).
    seen = dev_atlas.events.snapshot()[before:]
    assert {event["kind"] for event in seen} <= {"drush_execute", "drush_prepare"}, seen
    assert [event.get("matched") for event in seen if event["kind"] == "drush_prepare"] == [0]
    event = AuditEvent.objects.get(action="environment_test_connection")
    assert (event.username, event.environment_name, event.outcome) == ("ops-lead", "DEV", "ok")


def test_connection_reports_refused_credentials_per_environment_without_the_password(
    client, dev_atlas, monkeypatch, caplog
):
    monkeypatch.setenv("ATLAS_DEV_PASSWORD", "wrong-secret-Zq7")
    Environment.objects.filter(name="TEST").update(api_url=f"http://127.0.0.1:{_closed_port()}/")

    messages, page = run_test_connection(client, make_user(), "DEV", "TEST")

    levels = dict((text.split(":")[0], level) for level, text in messages)
    assert levels == {"DEV": "error", "TEST": "error"}
    dev = next(text for _, text in messages if text.startswith("DEV"))
    assert "HTTP 401" in dev and len(dev_atlas.events.of_kind(AUTH_FAILED)) == 1
    for secret in ("wrong-secret-Zq7", DEV_PASSWORD, "test-secret-Zq7"):
        assert secret not in page and secret not in caplog.text
        assert not AuditEvent.objects.filter(message__contains=secret).exists()
    assert AuditEvent.objects.filter(action="environment_test_connection", outcome="error").count() == 2


def test_connection_needs_the_change_permission(client, dev_atlas):
    viewer = make_user("auditor", permissions=("view_environment",))
    client.force_login(viewer)

    response = client.post(
        reverse("admin:releases_environment_changelist"),
        {"action": "test_connection", "_selected_action": [Environment.objects.get(name="DEV").pk]},
    )

    assert response.status_code in (200, 302)
    assert not AuditEvent.objects.filter(action="environment_test_connection").exists()
