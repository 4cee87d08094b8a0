"""System checks of the Atlas configuration, run at start-up (`manage.py check`, `runserver`,
`migrate`, the worker command): what would otherwise surface only when a step first runs.

atlas.W001  an environment has no Atlas API URL
atlas.W002  an environment's password variable is not set (or may not be read by it)
atlas.W003  an environment's Slack webhook variable is not set (or may not be read by it)
atlas.W004  the broker does not answer

The messages name variables, never their values. Nothing here sends anything to Atlas: the
admin's "Test connection" action does that, on request.
"""

from __future__ import annotations

from django.core.checks import Warning, register
from django.db import DatabaseError


@register("atlas")
def check_environments(app_configs=None, **kwargs) -> list[Warning]:
    from .models import Environment, EnvironmentMisconfigured

    try:
        environments = list(Environment.objects.all())
    except DatabaseError:
        return []  # not migrated yet (or no database): `migrate` comes first
    found = []
    for env in environments:
        if not env.api_url:
            found.append(
                Warning(f"Environment {env.name} has no Atlas API URL.", id="atlas.W001",
                        hint=f"Set it with `manage.py environment set {env.name} --url URL --user NAME`.")
            )  # fmt: skip
        for field, code, read in (("password_env", "atlas.W002", env.password),
                                  ("slack_webhook_env", "atlas.W003", env.slack_webhook_url)):  # fmt: skip
            if field == "slack_webhook_env" and not env.slack_webhook_env:
                continue  # Slack is optional
            try:
                read()
            except EnvironmentMisconfigured as exc:
                found.append(Warning(str(exc), id=code, hint="Set the variable in the environment of every "
                                     "portal process (web and workers), then restart them."))  # fmt: skip
    return found


@register("atlas")
def check_broker(app_configs=None, **kwargs) -> list[Warning]:
    from django.conf import settings

    from portal.health import broker_problem

    problem = broker_problem()
    if not problem:
        return []
    return [
        Warning(
            f"The broker ({settings.CELERY_BROKER_DESCRIPTION}) does not answer: {problem}",
            id="atlas.W004",
            hint="Steps cannot be launched or run until it does; see CELERY_BROKER_URL.",
        )
    ]
