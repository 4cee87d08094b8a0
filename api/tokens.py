"""Creating, revoking and checking personal API tokens: the one code path of the admin's token
page, `manage.py token` and the API's authentication. Creations and revocations are audited
(never the token itself)."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from releases.models import AuditEvent

from .models import PREFIX, ApiToken, digest

MAX_LIFETIME = timedelta(days=366)
DEFAULT_LIFETIME = timedelta(days=90)
# last_used_at is written at most this often per token (not one write per request).
LAST_USED_RESOLUTION = timedelta(seconds=60)
_LIFETIME = re.compile(r"^(\d+)([dh])$")


class TokenRefused(Exception):
    """A token could not be created or revoked; the message says why."""


def parse_lifetime(text: str) -> timedelta:
    """`90d` (days) or `12h` (hours), at most 366 days."""
    match = _LIFETIME.match(text.strip().lower())
    if not match:
        raise TokenRefused(f"expiry {text!r} is not a number of days or hours, e.g. 90d or 12h")
    amount, unit = int(match[1]), match[2]
    lifetime = timedelta(days=amount) if unit == "d" else timedelta(hours=amount)
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise TokenRefused("a token lives more than 0 and at most 366 days")
    return lifetime


def create(user, name: str, *, lifetime: timedelta = DEFAULT_LIFETIME, read_only: bool = False, by=None):
    """A new token for `user`; returns (row, token). The token is not stored: show it once."""
    by = by or user
    name = name.strip()
    params = {"owner": user.get_username(), "name": name, "read_only": read_only}
    try:
        if not name or len(name) > ApiToken._meta.get_field("name").max_length:
            raise TokenRefused("a token's name is 1 to 64 characters")
        if not (user.is_active and user.is_staff):
            raise TokenRefused(f"{user.get_username()} is not an active staff account")
        if by != user and not by.is_superuser:
            raise TokenRefused("only a superuser creates tokens for someone else")
        if not timedelta(0) < lifetime <= MAX_LIFETIME:
            raise TokenRefused("a token lives more than 0 and at most 366 days")
        token = PREFIX + secrets.token_urlsafe(32)
        now = timezone.now()
        with transaction.atomic():
            # An expired token keeps its name until revoked: retire it, so the name can be reused.
            for old in ApiToken.objects.filter(
                user=user, name=name, revoked_at__isnull=True, expires_at__lte=now
            ):
                _revoke(old, by, now, why="expired; its name was reused")
            row = ApiToken.objects.create(
                user=user, name=name, hashed=digest(token), expires_at=now + lifetime, read_only=read_only
            )
            AuditEvent.record(
                "token_create", user=by, parameters={**params, "expires_at": row.expires_at.isoformat()}
            )
    except IntegrityError:
        _refused(by, "token_create", params, f"{user.get_username()} already has a token named {name!r}")
    except TokenRefused as exc:
        _refused(by, "token_create", params, str(exc))
    return row, token


def revoke(token: ApiToken, by) -> ApiToken:
    """Revoke `token` (its owner, or a superuser); revoking a revoked token changes nothing."""
    params = {"owner": token.user.get_username(), "name": token.name}
    if by != token.user and not by.is_superuser:
        _refused(by, "token_revoke", params, "only the token's owner or a superuser revokes it")
    if token.revoked_at is None:
        _revoke(token, by, timezone.now())
    return token


def revoke_named(user, name: str, by=None) -> ApiToken:
    token = ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True).first()
    if token is None:
        _refused(by or user, "token_revoke", {"owner": user.get_username(), "name": name},
                 f"{user.get_username()} has no token named {name!r} that is not revoked")  # fmt: skip
    return revoke(token, by or user)


def _revoke(token: ApiToken, by, now, why: str = "") -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=now, revoked_by=by.get_username()
    )
    token.revoked_at, token.revoked_by = now, by.get_username()
    AuditEvent.record(
        "token_revoke",
        user=by,
        parameters={"owner": token.user.get_username(), "name": token.name},
        message=why,
    )


def _refused(by, action: str, params: dict, message: str) -> None:
    AuditEvent.record(action, user=by, outcome=AuditEvent.Outcome.REFUSED, parameters=params, message=message)
    raise TokenRefused(message)


def authenticate(token: str) -> tuple[ApiToken | None, str]:
    """The active token `token` names, or (None, why not) — the reason never repeats the token."""
    if not token.startswith(PREFIX):
        return None, "not a portal token"
    row = ApiToken.objects.select_related("user").filter(hashed=digest(token)).first()
    if row is None:
        return None, "unknown token"
    now = timezone.now()
    if row.revoked_at is not None:
        return None, f"token {row} was revoked"
    if row.expires_at <= now:
        return None, f"token {row} expired"
    if not (row.user.is_active and row.user.is_staff):
        return None, f"token {row} belongs to an inactive or non-staff account"
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        row.last_used_at = now
    return row, ""
