"""A clean start for a newcomer: `make run` says it is ready only once it is, with the demo
accounts it created; ordinary refusals are logged as one line; the README's command lines use the
project's virtual environment and the demo's own accounts and passwords.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils.log import log_response

from releases.management.commands import runportal
from tests.support import make_user

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.fixture
def portal_log():
    """What the portal's console handler prints (its formatter, its filters), as text."""
    (console,) = [h for h in logging.getLogger().handlers if h.name == "console"]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(console.formatter)
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


# -- ordinary refusals: one line -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_403_is_logged_as_one_line_without_a_traceback(client, portal_log):
    client.force_login(make_user("reader", permissions=()))

    response = client.get("/admin/releases/environment/add/")

    assert response.status_code == 403
    logged = portal_log.getvalue()
    assert "Traceback" not in logged and "PermissionDenied" not in logged
    (line,) = [line for line in logged.splitlines() if "django.request" in line]
    assert line.endswith(
        "WARNING django.request: Forbidden (Permission denied): /admin/releases/environment/add/"
    )


def test_a_404_is_one_line_but_a_server_error_keeps_its_traceback(portal_log):
    request = RequestFactory().get("/somewhere/")
    try:
        raise LookupError("a bug")
    except LookupError as exc:
        log_response(
            "Not Found: %s", "/somewhere/", response=HttpResponse(status=404), request=request, exception=exc
        )
        log_response("Internal Server Error: %s", "/somewhere/", response=HttpResponse(status=500), request=request,
                     exception=exc)  # fmt: skip

    not_found, server_error, *traceback = portal_log.getvalue().splitlines()
    assert not_found.endswith("WARNING django.request: Not Found: /somewhere/")
    assert server_error.endswith("ERROR django.request: Internal Server Error: /somewhere/")
    assert traceback[0] == "Traceback (most recent call last):" and traceback[-1] == "LookupError: a bug"


# -- make run: ready, and the demo accounts ---------------------------------------------------------


@pytest.mark.django_db
def test_runportal_creates_the_demo_accounts_it_prints_with_their_roles():
    runportal.Command()._ensure_accounts()

    users = {u.username: u for u in get_user_model().objects.all()}
    assert set(runportal.DEMO_ACCOUNTS) <= set(users)
    assert users["admin"].is_superuser
    lead, viewer = users["prod-manager"], users["viewer"]
    assert lead.is_staff and viewer.is_staff and not lead.is_superuser
    assert lead.has_perms(["releases.launch_step", "releases.launch_protected", "releases.finalize_release"])
    assert viewer.has_perm("releases.view_auditevent") and not viewer.has_perm("releases.launch_step")
    assert lead.check_password("demo")
    assert all(users[name].check_password("demo") for name in runportal.DEMO_ACCOUNTS)  # one password


@pytest.mark.django_db
def test_runportal_keeps_accounts_an_operator_changed_since_the_first_run():
    make_user("prod-manager", permissions=())

    runportal.Command()._ensure_accounts()

    assert not get_user_model().objects.get(username="prod-manager").has_perm("releases.launch_step")


def test_the_ready_banner_starts_with_the_ready_line_and_lists_every_demo_account(monkeypatch):
    monkeypatch.delenv("PORTAL_DEMO_PASSWORD", raising=False)
    ready, *rest = runportal.ready_banner("127.0.0.1:8000", "embedded filesystem broker in var/broker")

    assert ready.startswith("Ready: ") and "http://127.0.0.1:8000/admin/" in ready
    for username in runportal.DEMO_ACCOUNTS:
        assert any(line.split()[:1] == [username] for line in rest), username
    assert "password 'demo'" in "\n".join(rest)
    monkeypatch.setenv("PORTAL_DEMO_PASSWORD", "demo-Secret-91")
    assert "demo-Secret-91" not in "\n".join(runportal.ready_banner("127.0.0.1:8000", "x"))


# -- the README ---------------------------------------------------------------------------------------


def readme_commands(section: str) -> list[str]:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in body.splitlines() if line.startswith("    ") and line.strip()]


def test_the_readme_keeps_its_two_commands():
    assert readme_commands("The two commands") == ["make run", "make test"]


def test_the_readme_command_lines_use_the_venv_and_the_demos_accounts_and_passwords():
    export, *lines = readme_commands("Releasing from the command line")

    assert lines and all(line.startswith(".venv/bin/python manage.py release ") for line in lines)
    expected = {"DEBUG": "true"} | {
        f"ATLAS_{n}_PASSWORD": p for n, p in runportal.SIMULATOR_PASSWORDS.items()
    }
    assert dict(word.split("=", 1) for word in export.split()[1:]) == expected
    for user in re.findall(r"--user (\S+)", " ".join(lines)):
        assert user in runportal.DEMO_ACCOUNTS
    commits = re.findall(r"--commit (\S+)", " ".join(lines))
    assert len(commits) == 2 and all(re.fullmatch(r"[0-9a-f]{40}", c) for c in commits)
    # Nowhere in the README does a bare `python manage.py` command line need an activated venv.
    assert not re.search(r"^\s+python3? manage\.py", README, re.MULTILINE)
