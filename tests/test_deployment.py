"""Safe defaults and production serving, each tried on the real process: `manage.py` and the
worker command started without the variables a deployment must set, `check --deploy` under the
documented production variables, and gunicorn serving the portal with DEBUG off.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SECRET = secrets.token_urlsafe(50)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_url() -> str:
    return f"postgres://portal:db-secret-Zq7@127.0.0.1:{free_port()}/portal"


def production_env(tmp_path: Path, **overrides: str) -> dict:
    """The documented production variables (README, Deployment), on throwaway local storage."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_", "CELERY_", "SECURE_", "ATLAS_")) and key != "DEBUG"
    }
    env.update(
        {
            "SECRET_KEY": SECRET,
            "ALLOWED_HOSTS": "portal.example.edu,127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}",
            "CELERY_BROKER_URL": f"filesystem://{tmp_path / 'broker'}",
            "STATIC_ROOT": str(tmp_path / "static"),
        }
    )
    env.update(overrides)
    return {key: value for key, value in env.items() if value is not None}


def run(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return run([sys.executable, "manage.py", *args], env)


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert expected in result.stderr, result.stderr


# -- start-up refusals: one line, no traceback -----------------------------------------------------


def test_check_deploy_is_clean_under_the_documented_production_variables(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_a_plain_http_deployment_opts_out_explicitly_and_check_deploy_stays_clean(tmp_path):
    env = production_env(tmp_path, PORTAL_PLAIN_HTTP="true")
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    printed = manage("shell", "-v", "0", "-c", "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, "
                     "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)", env=env)  # fmt: skip
    assert printed.stdout.split() == ["False", "False", "False", "0"]


def test_https_settings_are_on_by_default_with_debug_off(tmp_path):
    printed = manage("shell", "-v", "0", "-c", "from django.conf import settings as s; print(s.DEBUG, s.SECURE_SSL_REDIRECT, "
                     "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)",
                     env=production_env(tmp_path))  # fmt: skip
    assert printed.stdout.split() == ["False", "True", "True", "True", "31536000"], printed.stderr


def test_without_secret_key_and_debug_off_the_start_fails_with_one_line(tmp_path):
    result = manage("check", env=production_env(tmp_path, SECRET_KEY=None))

    assert_one_line(result, "SECRET_KEY must be set when DEBUG is off")


def test_without_a_broker_url_and_debug_off_the_start_fails_with_one_line(tmp_path):
    result = manage("check", env=production_env(tmp_path, CELERY_BROKER_URL=None))

    assert_one_line(result, "CELERY_BROKER_URL must be set when DEBUG is off")


@pytest.mark.parametrize("url", ["nonsense", "postgres//host/db", "mongodb://h/db"])
def test_a_malformed_database_url_fails_with_one_line_that_does_not_echo_it(tmp_path, url):
    result = manage("migrate", env=production_env(tmp_path, DATABASE_URL=url))

    assert_one_line(result, "DATABASE_URL is not a database URL")
    assert url not in result.stderr


def test_a_database_that_does_not_answer_fails_with_one_line_without_the_password(tmp_path):
    result = manage("migrate", env=production_env(tmp_path, DATABASE_URL=closed_port_url()))

    assert_one_line(result, "portal: database postgresql 127.0.0.1:")
    assert "db-secret-Zq7" not in result.stderr


def test_the_worker_command_refuses_a_bad_configuration_with_one_line(tmp_path):
    worker = [sys.executable, "-m", "portal.worker"]

    assert_one_line(run(worker, production_env(tmp_path, SECRET_KEY=None)), "SECRET_KEY must be set")
    assert_one_line(run(worker, production_env(tmp_path, DATABASE_URL="nonsense")), "not a database URL")
    unanswered = run(worker, production_env(tmp_path, DATABASE_URL=closed_port_url()))
    assert_one_line(unanswered, "portal: database postgresql 127.0.0.1:")
    assert "db-secret-Zq7" not in unanswered.stderr


# -- the web process: gunicorn, DEBUG off ----------------------------------------------------------


class Gunicorn:
    def __init__(self, env: dict) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "portal.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "1", "--access-logfile", "-"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/healthz", timeout=2)
                return
            except requests.ConnectionError:
                assert self.process.poll() is None, self.process.communicate()[0]
                time.sleep(0.2)
        self.stop()
        raise AssertionError("gunicorn did not answer")

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=10, allow_redirects=False, **kwargs)

    def stop(self) -> str:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.communicate()[0]


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """gunicorn with the production variables over plain HTTP (no TLS proxy in a test)."""
    tmp_path = tmp_path_factory.mktemp("web")
    env = production_env(tmp_path, PORTAL_PLAIN_HTTP="true")
    collected = manage("collectstatic", "--noinput", env=env)
    assert collected.returncode == 0, collected.stderr
    server = Gunicorn(env)
    yield server
    server.stop()


def test_an_unauthenticated_404_does_not_show_the_debug_page(web):
    response = web.get("/no-such-page/")

    assert response.status_code == 404
    assert "URLconf" not in response.text and "admin/" not in response.text
    assert "DEBUG = True" not in response.text


def test_static_files_are_served_by_the_web_process(web):
    response = web.get("/static/admin/css/base.css")

    assert response.status_code == 200
    assert "text/css" in response.headers["Content-Type"]


def test_healthz_answers_200_with_json_without_login(web):
    response = web.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_healthz_answers_503_when_the_database_does_not_answer(tmp_path):
    server = Gunicorn(production_env(tmp_path, PORTAL_PLAIN_HTTP="true", DATABASE_URL=closed_port_url()))
    try:
        response = server.get("/healthz")
    finally:
        server.stop()

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "unavailable", "broker": "ok"}}
    assert "127.0.0.1" not in response.text and "db-secret" not in response.text


def test_healthz_is_exempt_from_the_https_redirect_but_other_pages_are_not(tmp_path):
    server = Gunicorn(production_env(tmp_path))
    try:
        health, admin = server.get("/healthz"), server.get("/admin/login/")
    finally:
        server.stop()

    assert health.status_code == 200
    assert admin.status_code == 301 and admin.headers["Location"].startswith("https://")
