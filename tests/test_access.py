"""The admin's login is throttled, sessions expire, and /healthz tells the broker's state."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.utils import timezone

from tests.support import make_user

LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def login(client, password: str):
    return client.post(LOGIN, {"username": "ops-lead", "password": password})


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.django_db
def test_the_right_password_logs_in_before_any_lockout(client):
    make_user()
    login(client, "wrong")

    response = login(client, "pw")

    assert response.status_code == 302 and logged_in(client)


@pytest.mark.django_db
def test_after_the_failure_limit_even_the_right_password_is_refused(client, settings):
    make_user()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert login(client, "wrong").status_code == 200  # the form again, with its error
    assert login(client, "wrong").status_code == 429  # the failure that reaches the limit

    response = login(client, "pw")

    assert response.status_code == 429
    assert not logged_in(client)


@pytest.mark.django_db
def test_a_session_expires_after_its_age_and_at_browser_close(client, settings):
    make_user()
    login(client, "pw")

    session = Session.objects.get()
    assert session.expire_date <= timezone.now() + timedelta(seconds=settings.SESSION_COOKIE_AGE)
    assert settings.SESSION_COOKIE_AGE <= 12 * 3600
    assert client.cookies[settings.SESSION_COOKIE_NAME]["expires"] == ""  # a browser-session cookie


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_healthz_answers_503_when_the_broker_does_not_answer_and_names_no_host(client, settings):
    port = _closed_port()
    settings.CELERY_BROKER_URL = f"redis://:broker-secret-Zq7@127.0.0.1:{port}/12"

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "ok", "broker": "unavailable"}}
    assert str(port) not in response.content.decode() and "broker-secret" not in response.content.decode()


@pytest.mark.django_db
def test_healthz_answers_200_on_the_embedded_broker(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
