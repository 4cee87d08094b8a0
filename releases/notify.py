"""Optional Slack messages per environment. The webhook URL is read from the variable the
environment names; it is never logged. A failed post never affects the step."""

from __future__ import annotations

import logging
import os

import requests
from django.conf import settings

logger = logging.getLogger(__name__)


def step_event(step, event: str) -> None:
    env = step.environment
    if env is None or not env.slack_webhook_env:
        return
    url = os.environ.get(env.slack_webhook_env)
    if not url:
        logger.warning("%s: Slack variable %s is not set; no message sent", env.name, env.slack_webhook_env)
        return
    link = f"{settings.PORTAL_BASE_URL}/admin/releases/steprun/{step.pk}/change/"
    text = f"Release {step.plan.version} step {step.number} on {env.name} ({step.title}): {event}. {link}"
    try:
        requests.post(url, json={"text": text}, timeout=(3.05, 5))
    except requests.RequestException as exc:
        logger.warning("%s: Slack message not sent (%s)", env.name, type(exc).__name__)
