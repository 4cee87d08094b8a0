"""Slack messages: sent to the webhook the environment's variable names; failures never raise."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from releases import notify, services
from releases.models import Environment
from tests.support import R, make_user


class _Capture(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Capture.received = []
    server = HTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/T000/B000/secret-path", _Capture.received
    server.shutdown()


@pytest.fixture
def step(db):
    from django.core.management import call_command

    call_command("loadrunbook", verbosity=0)
    plan = services.create_plan("2.8.5", commit=R, user=make_user())
    return plan.steps.get(number=2)


def test_step_event_posts_to_the_webhook_named_by_the_environment(step, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("ATLAS_DEV_SLACK_WEBHOOK", url)
    Environment.objects.filter(name="DEV").update(slack_webhook_env="ATLAS_DEV_SLACK_WEBHOOK")
    step.refresh_from_db()
    notify.step_event(step, "succeeded")
    assert len(received) == 1
    assert "2.8.5 step 2 on DEV" in received[0]["text"] and "succeeded" in received[0]["text"]


def test_step_event_without_a_webhook_sends_nothing(step, webhook):
    notify.step_event(step, "succeeded")
    assert webhook[1] == []


def test_unreachable_webhook_is_logged_without_its_url(step, monkeypatch, caplog):
    monkeypatch.setenv("ATLAS_DEV_SLACK_WEBHOOK", "http://127.0.0.1:9/hooks/secret-path")
    Environment.objects.filter(name="DEV").update(slack_webhook_env="ATLAS_DEV_SLACK_WEBHOOK")
    step.refresh_from_db()
    notify.step_event(step, "failed")
    assert "Slack message not sent" in caplog.text
    assert "secret-path" not in caplog.text
