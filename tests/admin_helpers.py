"""Helpers for the admin tests: URLs, messages, and the two-step launch as a browser does it."""

from __future__ import annotations

from django.contrib.messages import get_messages
from django.urls import reverse

from releases.models import StepRun


def url(name, plan, *args, query: str = "") -> str:
    return reverse(f"admin:releases_releaseplan_{name}", args=[plan.pk, *args]) + query


def messages_of(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def mark_done(plan, *numbers) -> None:
    StepRun.objects.filter(plan=plan, number__in=numbers).update(state="succeeded")


def confirm_launch(client, plan, number, *, stage: bool = False, typed: str | None = None):
    """GET the confirmation page, then POST its form as shown (the signed counts included)."""
    query = "?stage=1" if stage else ""
    page = client.get(url("launch", plan, number, query=query))
    assert page.status_code == 200, page.status_code
    data = {"confirmed": page.context["token"]}
    if stage:
        data["stage"] = "1"
    if typed is not None:
        data["confirm_environment"] = typed
    return page, client.post(url("launch", plan, number), data)
