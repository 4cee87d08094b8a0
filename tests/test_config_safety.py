"""Issue 6 §5: configuration cannot bypass PROD's protection or make the portal send a secret.

One code path changes an environment (`services.change_environment`), used by `environment set`
and the admin's change form alike; an environment reads only its own secret variables.
"""

import base64
import io
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from releases import notify, services
from releases.models import AuditEvent, Environment, EnvironmentMisconfigured
from tests.support import R, make_user

pytestmark = pytest.mark.django_db

PROD_PASSWORD = "prod-secret-Qx81-never-sent"
DEV_PASSWORD = "dev-secret-Lm27"
CONFIGURE = ("change_environment", "view_environment")


@pytest.fixture(autouse=True)
def environments(monkeypatch):
    monkeypatch.setenv("ATLAS_PROD_PASSWORD", PROD_PASSWORD)
    monkeypatch.setenv("ATLAS_DEV_PASSWORD", DEV_PASSWORD)
    call_command("loadrunbook", verbosity=0)


@pytest.fixture
def configurer():
    """Staff with the change permission only: not trusted with PROD or with credentials."""
    return make_user("mallory", permissions=CONFIGURE)


@pytest.fixture
def trusted():
    return make_user("ops-lead", permissions=(*CONFIGURE, "launch_protected"))


class _Recorder(BaseHTTPRequestHandler):
    received: list = []

    def _answer(self):
        self.received.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def their_host():
    """Someone else's HTTP server: records the Authorization header of every request."""
    _Recorder.received = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", _Recorder.received
    server.shutdown()


def _passwords(received: list) -> list[str]:
    """The Basic-auth passwords among the recorded Authorization headers."""
    found = []
    for header in received:
        if header.startswith("Basic "):
            found.append(base64.b64decode(header[6:]).decode().partition(":")[2])
    return found


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _refusals(**where) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="environment_set", outcome="refused", **where))


# -- the admin change form and `environment set` share one rule -------------------------------------


def _form(env: Environment, **changes) -> dict:
    """The admin change form's POST data for `env` as stored, with `changes` applied."""
    data = {}
    for field in Environment._meta.concrete_fields:
        if field.primary_key:
            continue
        value = changes.get(field.name, field.value_from_object(env))
        if isinstance(value, bool):
            if value:
                data[field.name] = "on"
        else:
            data[field.name] = "" if value is None else value
    return data


def _change(client, user, name: str, **changes):
    env = Environment.objects.get(name=name)
    client.force_login(user)
    url = reverse("admin:releases_environment_change", args=[env.pk])
    return client.post(url, _form(env, **changes))


def test_admin_refuses_unprotecting_prod_without_the_protected_permission(client, configurer):
    response = _change(client, configurer, "PROD", protected=False)

    assert response.status_code == 200  # the form again, with the error
    errors = " ".join(response.context["adminform"].form.non_field_errors())
    assert "mallory may not change PROD's settings (PROD is protected" in errors
    assert errors.endswith(": ask a PROD release manager")
    assert Environment.objects.get(name="PROD").protected
    (event,) = _refusals(environment_name="PROD")
    assert "ask a PROD release manager" in event.message and event.username == "mallory"


def test_admin_refuses_setting_prods_password_variable_without_the_protected_permission(client, configurer):
    response = _change(client, configurer, "PROD", password_env="SECRET_KEY")

    assert response.status_code == 200
    assert "ask a PROD release manager" in " ".join(response.context["adminform"].form.non_field_errors())
    assert Environment.objects.get(name="PROD").password_env == "ATLAS_PROD_PASSWORD"


def test_admin_refuses_credentials_of_an_unprotected_environment_without_the_protected_permission(
    client, configurer, their_host
):
    url, _ = their_host
    response = _change(client, configurer, "DEV", api_url=url, username="X")

    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.non_field_errors())
    assert "(it changes api_url, username): ask a PROD release manager" in errors
    assert Environment.objects.get(name="DEV").api_url != url
    assert len(_refusals(environment_name="DEV")) == 1


def test_admin_saves_an_ordinary_setting_through_the_service_and_audits_it(client, configurer):
    response = _change(client, configurer, "DEV", parallelism=7)

    assert response.status_code == 302
    assert Environment.objects.get(name="DEV").parallelism == 7
    event = AuditEvent.objects.get(action="environment_set", outcome="ok")
    assert (event.parameters, event.message, event.environment_name) == (
        {"parallelism": [4, 7]},
        "via admin",
        "DEV",
    )


def test_admin_lets_a_trusted_user_change_prod_and_audits_it(client, trusted):
    response = _change(client, trusted, "PROD", parallelism=2, verify_tls=False)

    assert response.status_code == 302
    prod = Environment.objects.get(name="PROD")
    assert (prod.parallelism, prod.verify_tls) == (2, False)
    event = AuditEvent.objects.get(action="environment_set", outcome="ok")
    assert event.parameters == {"parallelism": [4, 2], "verify_tls": [True, False]}


def test_admin_refuses_another_environments_password_variable_even_for_a_trusted_user(client, trusted):
    response = _change(client, trusted, "DEV", password_env="ATLAS_PROD_PASSWORD")

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["password_env"]
    assert "DEV: the password variable ATLAS_PROD_PASSWORD belongs to environment PROD" in errors
    assert Environment.objects.get(name="DEV").password_env == "ATLAS_DEV_PASSWORD"
    (event,) = _refusals(environment_name="DEV")
    assert event.parameters == {"requested": {"password_env": "ATLAS_PROD_PASSWORD"}}
    assert "ATLAS_PROD_PASSWORD" in event.message and PROD_PASSWORD not in event.message


def test_environments_cannot_be_added_or_deleted_in_the_admin(admin_client):
    dev = Environment.objects.get(name="DEV")

    assert admin_client.get(reverse("admin:releases_environment_add")).status_code == 403
    assert admin_client.post(reverse("admin:releases_environment_delete", args=[dev.pk])).status_code == 403
    changelist = admin_client.get(reverse("admin:releases_environment_changelist"))
    assert "delete_selected" not in changelist.content.decode()
    assert Environment.objects.count() == 3


# -- `environment set`: the attack from the issue ----------------------------------------------------


def test_cli_refuses_pointing_dev_at_prods_password_and_another_host(configurer, their_host):
    url, received = their_host

    with pytest.raises(
        CommandError, match="mallory may not change DEV's settings .*: ask a PROD release manager"
    ):
        run(
            "environment", "set", "DEV", "--password-env", "ATLAS_PROD_PASSWORD",
            "--url", url, "--user", "mallory",
        )  # fmt: skip

    dev = Environment.objects.get(name="DEV")
    assert (dev.password_env, dev.api_url) == ("ATLAS_DEV_PASSWORD", "http://127.0.0.1:5101/")
    (event,) = _refusals(environment_name="DEV")
    assert event.parameters["requested"]["password_env"] == "ATLAS_PROD_PASSWORD"
    assert received == []


def test_cli_refuses_any_change_to_prod_without_the_protected_permission(configurer):
    with pytest.raises(CommandError, match=r"\(PROD is protected\): ask a PROD release manager"):
        run("environment", "set", "PROD", "--parallelism", "2", "--user", "mallory")
    assert Environment.objects.get(name="PROD").parallelism == 4


def test_cli_refuses_protecting_an_environment_without_the_protected_permission(configurer):
    with pytest.raises(CommandError, match="it would protect TEST"):
        run("environment", "set", "TEST", "--protected", "--user", "mallory")
    assert not Environment.objects.get(name="TEST").protected


def test_cli_still_lets_the_change_permission_tune_an_unprotected_environment(configurer):
    run("environment", "set", "DEV", "--parallelism", "6", "--user", "mallory")

    assert Environment.objects.get(name="DEV").parallelism == 6


def test_renaming_an_environment_needs_the_protected_permission_and_an_upper_case_name(configurer, trusted):
    # `prod` would own ATLAS_PROD_PASSWORD: the name decides the environment's own variables.
    dev = Environment.objects.get(name="DEV")
    with pytest.raises(services.ActionRefused, match=r"\(it changes name\): ask a PROD release manager"):
        services.change_environment(dev, configurer, {"name": "prod"}, via="test")
    with pytest.raises(services.ActionRefused, match="DEV: name: must be upper case"):
        services.change_environment(dev, trusted, {"name": "prod"}, via="test")
    assert Environment.objects.filter(name="DEV").exists()


@pytest.mark.parametrize(
    ("variable", "reason"),
    [
        ("ATLAS_PROD_PASSWORD", "belongs to environment PROD"),
        ("ATLAS_TEST_SLACK_WEBHOOK", "belongs to environment TEST"),
        ("SECRET_KEY", "is not allowed: use ATLAS_DEV_PASSWORD or a variable listed"),
        ("DATABASE_URL", "is not allowed: use ATLAS_DEV_PASSWORD or a variable listed"),
    ],
)
def test_cli_refuses_a_password_variable_that_is_not_the_environments_own(trusted, variable, reason):
    with pytest.raises(
        CommandError, match=f"DEV: password_env: DEV: the password variable {variable} {reason}"
    ):
        run("environment", "set", "DEV", "--password-env", variable, "--user", "ops-lead")
    assert Environment.objects.get(name="DEV").password_env == "ATLAS_DEV_PASSWORD"


def test_cli_accepts_an_allow_listed_password_variable(trusted, settings):
    settings.ATLAS_PASSWORD_VARIABLES = ["ATLAS_SHARED_PASSWORD"]

    run("environment", "set", "DEV", "--password-env", "ATLAS_SHARED_PASSWORD", "--user", "ops-lead")

    assert Environment.objects.get(name="DEV").password_env == "ATLAS_SHARED_PASSWORD"


def test_allow_list_never_admits_another_environments_variable(trusted, settings):
    settings.ATLAS_PASSWORD_VARIABLES = ["ATLAS_PROD_PASSWORD"]

    with pytest.raises(CommandError, match="belongs to environment PROD"):
        run("environment", "set", "DEV", "--password-env", "ATLAS_PROD_PASSWORD", "--user", "ops-lead")


def test_cli_refuses_a_slack_variable_that_is_not_the_environments_own(trusted):
    with pytest.raises(CommandError, match="Slack webhook variable SECRET_KEY is not allowed"):
        run("environment", "set", "DEV", "--slack-webhook-env", "SECRET_KEY", "--user", "ops-lead")

    run("environment", "set", "DEV", "--slack-webhook-env", "ATLAS_DEV_SLACK_WEBHOOK", "--user", "ops-lead")
    assert Environment.objects.get(name="DEV").slack_webhook_env == "ATLAS_DEV_SLACK_WEBHOOK"


# -- a row changed behind the validation still never sends another secret ---------------------------


def test_model_validation_names_the_refused_variable():
    dev = Environment.objects.get(name="DEV")
    dev.password_env = "SECRET_KEY"

    with pytest.raises(ValidationError) as info:
        dev.full_clean()
    assert "SECRET_KEY is not allowed" in " ".join(info.value.message_dict["password_env"])


def test_forced_row_never_sends_prods_password_on_preview(their_host):
    url, received = their_host
    Environment.objects.filter(name="DEV").update(
        password_env="ATLAS_PROD_PASSWORD", api_url=url, username="X", max_attempts=1
    )
    services.create_plan("2.8.5", commit=R, user=make_user("ops-lead"))
    out = io.StringIO()

    with pytest.raises(CommandError, match="could not preview step"):
        call_command("release", "preview", "2.8.5", "--step", "2", "--json", stdout=out, stderr=io.StringIO())

    (preview,) = json.loads(out.getvalue())
    assert "the password variable ATLAS_PROD_PASSWORD belongs to environment PROD" in preview["error"]
    assert PROD_PASSWORD not in out.getvalue()
    assert received == []  # not one request reached their host
    # The same host does get DEV's own password once the row names it: the recorder works.
    Environment.objects.filter(name="DEV").update(password_env="ATLAS_DEV_PASSWORD")
    with pytest.raises(CommandError):
        call_command("release", "preview", "2.8.5", "--step", "2", stdout=io.StringIO(), stderr=io.StringIO())
    assert _passwords(received) and set(_passwords(received)) == {DEV_PASSWORD}


@pytest.mark.parametrize("variable", ["SECRET_KEY", "DATABASE_URL", "ATLAS_PROD_PASSWORD"])
def test_forced_row_cannot_build_a_client(variable, monkeypatch):
    monkeypatch.setenv(variable, "some-secret-value")
    Environment.objects.filter(name="DEV").update(password_env=variable)

    with pytest.raises(EnvironmentMisconfigured, match=f"DEV: the password variable {variable}") as info:
        Environment.objects.get(name="DEV").client()
    assert "some-secret-value" not in str(info.value)


def test_forced_slack_variable_sends_nothing_and_logs_only_its_name(their_host, monkeypatch, caplog):
    url, received = their_host
    monkeypatch.setenv("ATLAS_PROD_SLACK_WEBHOOK", url + "prod-hook-secret")
    Environment.objects.filter(name="DEV").update(slack_webhook_env="ATLAS_PROD_SLACK_WEBHOOK")
    plan = services.create_plan("2.8.5", commit=R, user=make_user("ops-lead"))

    with caplog.at_level(logging.WARNING):
        notify.step_event(plan.steps.get(number=2), "succeeded")

    assert received == []
    assert "ATLAS_PROD_SLACK_WEBHOOK belongs to environment PROD" in caplog.text
    assert "prod-hook-secret" not in caplog.text


def test_loadrunbook_rows_pass_validation_and_read_their_own_password():
    for env in Environment.objects.all():
        env.full_clean()
        assert env.password_env == f"ATLAS_{env.name}_PASSWORD"
    assert Environment.objects.get(name="PROD").password() == PROD_PASSWORD


def test_allow_list_setting_cannot_name_the_portals_own_secrets():
    environment = {**os.environ, "ATLAS_PASSWORD_VARIABLES": "ATLAS_SHARED_PASSWORD,SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "ATLAS_PASSWORD_VARIABLES must not list the portal's own secrets: SECRET_KEY" in result.stderr
