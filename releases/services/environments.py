"""Changing an environment's configuration: what weakens its protection, and who may."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from .. import roles
from ..models import (
    AuditEvent,
    Environment,
)
from .core import (
    PERMISSIONS,
    ActionRefused,
    plain,
)

# -- configuration ---------------------------------------------------------------------------------

# Changing any of these on any environment needs the protected permission too: they decide where
# the portal sends which credentials, and whether PROD's protection applies at all. The name is
# one of them because it decides the environment's own variables (ATLAS_<NAME>_PASSWORD).
PROTECTED_SETTINGS = (
    "name",
    "api_url",
    "username",
    "password_env",
    "verify_tls",
    "protected",
    "slack_webhook_env",
    "two_person",
)


def weakenings(env: Environment, requested: dict) -> list[str]:
    """What in `requested` would weaken `env`'s protection, in words ("two_person on → off")."""
    found = []
    for field in ("two_person", "protected", "verify_tls", "verify", "canary"):
        if field in requested and getattr(env, field) and not requested[field]:
            found.append(f"{field} on → off")
    if "parallelism" in requested and (requested["parallelism"] or 0) > env.parallelism:
        found.append(f"parallelism {env.parallelism} → {requested['parallelism']}")
    if {"max_unverified", "parallelism"} & requested.keys():
        after = Environment(
            parallelism=requested.get("parallelism", env.parallelism),
            max_unverified=requested.get("max_unverified", env.max_unverified),
        ).unverified_limit()
        if after > env.unverified_limit():
            found.append(f"sites updating at once {env.unverified_limit()} → {after}")
    if {"failure_threshold_count", "failure_threshold_percent"} & requested.keys():
        old = (env.failure_threshold_count, env.failure_threshold_percent)
        new = (
            requested.get("failure_threshold_count", old[0]),
            requested.get("failure_threshold_percent", old[1]),
        )
        if _looser(old, new):
            found.append(f"failure threshold {_threshold_text(*old)} → {_threshold_text(*new)}")
    return found


def _looser(old: tuple, new: tuple) -> bool:
    """Whether threshold `new` (count, percent) lets more sites fail than `old` may: a higher
    count or percentage, no limit, or a change between a count and a percentage (not comparable)."""
    if old == new or old == (None, None):
        return False
    if new == (None, None):
        return True
    if old[0] is not None and new[0] is not None and new[1] is None and old[1] is None:
        return new[0] > old[0]
    if old[1] is not None and new[1] is not None and new[0] is None and old[0] is None:
        return new[1] > old[1]
    return True


def _threshold_text(count, percent) -> str:
    if count is not None:
        return f"{count} sites"
    return f"{percent:g}%" if percent is not None else "none"


def environment_change_refusal(user, env: Environment, requested: dict) -> str:
    """Why `user` may not make the `requested` changes to `env` as it is now ('' if they may).

    On a two-person environment, weakening its protection is reserved to superusers: otherwise
    one PROD release manager could turn the rule off, act alone, and turn it back on."""
    if env.two_person and not user.is_superuser:
        weaker = weakenings(env, requested)
        if weaker:
            return (
                f"{env.name} requires two people: weakening its protection ({', '.join(weaker)}) is "
                f"reserved to superusers, and {user.get_username()} is not one"
            )
    missing = [] if user.has_perm(PERMISSIONS["environment_set"]) else [PERMISSIONS["environment_set"]]
    why = []
    if env.protected or requested.get("protected"):
        why.append(f"{env.name} is protected" if env.protected else f"it would protect {env.name}")
    touched = [f for f in PROTECTED_SETTINGS if f in requested and requested[f] != getattr(env, f)]
    if touched:
        why.append(f"it changes {', '.join(touched)}")
    if why and not user.has_perm("releases.launch_protected"):
        missing.append("releases.launch_protected")
    if not missing:
        return ""
    because = f" ({'; '.join(why)})" if why and "releases.launch_protected" in missing else ""
    return f"{user.get_username()} may not change {env.name}'s settings{because}: {roles.ask(*missing)}"


def check_environment_change(user, env: Environment, requested: dict, *, via: str) -> None:
    """Raise ActionRefused (audited) unless `user` may make the `requested` changes to `env`."""
    refusal = environment_change_refusal(user, env, requested)
    if refusal:
        _refuse_environment(refusal, user, env, requested, via)


def change_environment(env: Environment, user, requested: dict, *, via: str) -> dict:
    """The one way an environment's settings change: `manage.py environment set` and the admin.

    `requested` maps model fields to new values; `failure_threshold` may be given as text
    (`5`, `10%`, `none`) instead of the two threshold fields. Checks the permissions (against the
    row as it is, under a lock), validates the row (its secret variables included), saves and
    audits what changed; returns {field: [old, new]}. Refusals are audited and raise ActionRefused
    with nothing saved.
    """
    values = dict(requested)
    try:
        if "failure_threshold" in values:
            count, percent = parse_threshold(values.pop("failure_threshold"))
            values.update(failure_threshold_count=count, failure_threshold_percent=percent)
        with transaction.atomic():
            row = Environment.objects.select_for_update().get(pk=env.pk)
            refusal = environment_change_refusal(user, row, values)
            if refusal:
                raise ActionRefused(refusal)
            before = {field: getattr(row, field) for field in values}
            for field, value in values.items():
                setattr(row, field, value)
            row.full_clean()
            # full_clean leaves the cleaned values on the row: compare those.
            changes = {f: [before[f], getattr(row, f)] for f in values if before[f] != getattr(row, f)}
            if changes:
                row.save(update_fields=list(changes))
                AuditEvent.record(
                    "environment_set", user=user, environment=row, parameters=changes, message=f"via {via}"
                )
    except ValidationError as exc:
        _refuse_environment(f"{env.name}: {'; '.join(validation_messages(exc))}", user, env, requested, via)
    except ActionRefused as exc:
        _refuse_environment(str(exc), user, env, requested, via)
    return changes


def _refuse_environment(message: str, user, env: Environment, requested: dict, via: str) -> None:
    AuditEvent.record(
        "environment_set",
        user=user,
        environment=env,
        outcome=AuditEvent.Outcome.REFUSED,
        parameters={"requested": {k: plain(v) for k, v in requested.items()}},
        message=f"{message} (via {via})",
    )
    raise ActionRefused(message)


def parse_threshold(text: str) -> tuple[int | None, float | None]:
    """`5` -> 5 sites, `10%` -> 10 percent, `none` -> no limit. Returns (count, percent)."""
    value = text.strip().lower()
    if value in ("none", ""):
        return None, None
    try:
        if value.endswith("%"):
            percent = float(value[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return None, percent
        count = int(value)
        if count < 1:
            raise ValueError
        return count, None
    except ValueError:
        raise ValidationError(
            {"failure_threshold": f"{text!r} is not a count ≥ 1, a percentage in (0, 100]% or `none`"}
        ) from None


def validation_messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "error_dict"):
        return [f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items()]
    return exc.messages
