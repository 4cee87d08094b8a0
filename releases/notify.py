"""Optional Slack messages per environment. The webhook URL is read from the variable the
environment names; it is never logged. A failed post never affects the step."""

from __future__ import annotations

import logging

import requests
from django.conf import settings

from .models import EnvironmentMisconfigured

logger = logging.getLogger(__name__)


def step_event(step, event: str) -> None:
    env = step.environment
    if env is None or not env.slack_webhook_env:
        return
    try:
        # Checks the row may read that variable: never another environment's, nor another secret.
        url = env.slack_webhook_url()
    except EnvironmentMisconfigured as exc:
        logger.warning("%s; no Slack message sent", exc)
        return
    link = f"{settings.PORTAL_BASE_URL}/admin/releases/steprun/{step.pk}/change/"
    text = f"Release {step.plan.version} step {step.number} on {env.name} ({step.title}): {event}. {link}"
    try:
        requests.post(url, json={"text": text}, timeout=(3.05, 5))
    except requests.RequestException as exc:
        logger.warning("%s: Slack message not sent (%s)", env.name, type(exc).__name__)
