"""The channel an action came through, for the audit trail: `admin` (the web process), `shell`
(`manage.py` on the portal's server), `api` (a personal token; its name is the account), or `system`
(the workers' own decisions).

What each channel proves differs. The admin proves the person: they logged in with their own
password. The shell proves only the operating-system account that ran the command (read from
the process's real user id, not from variables the caller can set); `--user` is a claim that
anyone with that shell can make. So every audit row records the channel and, for the shell, the
operating-system account, and a shell approval of a shell request from the same account is refused.
"""

from __future__ import annotations

import contextvars
import functools
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import models

ADMIN, SHELL, API, SYSTEM = "admin", "shell", "api", "system"
CHOICES = [(ADMIN, "admin"), (SHELL, "shell"), (API, "API"), (SYSTEM, "system")]


def field(**options) -> models.CharField:
    """The model field that records a channel (an audit row's, a launch request's)."""
    return models.CharField(max_length=8, choices=CHOICES, default=SYSTEM, **options)


@dataclass(frozen=True)
class Channel:
    name: str
    # The operating-system account (shell) or the token's name (api); empty for the others.
    account: str = ""

    def same_shell_account(self, channel: str, account: str) -> bool:
        """Whether an earlier action recorded as (`channel`, `account`) came from this very shell account."""
        return self.name == SHELL and channel == SHELL and bool(account) and account == self.account


# A frozen dataclass: the shared default cannot be changed in place.
_current: contextvars.ContextVar[Channel] = contextvars.ContextVar(
    "releases_channel",
    default=Channel(SYSTEM),  # noqa: B039
)


def current() -> Channel:
    return _current.get()


@contextmanager
def acting_through(name: str, account: str = "") -> Iterator[Channel]:
    channel = Channel(name, account[:150])
    token = _current.set(channel)
    try:
        yield channel
    finally:
        _current.reset(token)


def shell():
    """The channel of a management command: the shell, under the process's real OS account."""
    return acting_through(SHELL, os_account())


def from_shell(handle):
    """Decorates a management command's `handle`: what it does is recorded as the shell's."""

    @functools.wraps(handle)
    def wrapper(*args, **kwargs):
        with shell():
            return handle(*args, **kwargs)

    return wrapper


def os_account() -> str:
    """The operating-system account of this process's real user id (not $USER, which the caller sets)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (some containers)
        return f"uid {uid}"


class AdminChannelMiddleware:
    """Every request to the web process acts through the admin (the API will name its own)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with acting_through(ADMIN):
            return self.get_response(request)
