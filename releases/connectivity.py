"""Test an environment's Atlas connection on request: the client's side-effect-free credentials
check (atlas-api.md §2), audited. Never shows the password: only its variable's name. With
verification on, also whether Atlas runs drush for the account (`drush_role`): without its
`drush` role verification cannot ask the sites for reports.

Also the credentials probe of previews (`CredentialsProbes`): Atlas binds to LDAP on every
request, so a wrong password must cost one refused request per page or command, and a refusal is
remembered for a minute (`REFUSAL_MEMORY_SECONDS`) across pages and commands, or a few refreshes
of a confirmation page would lock the service account. The drush role of an update step's
environment is asked through the same object, once per environment, and remembered too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.locmem import LocMemCache
from django.utils.crypto import salted_hmac

from atlas.errors import AtlasError, AuthenticationError, DrushRoleMissing

from .engine.verify import DRUSH_COMMANDS, DRUSH_LABEL
from .models import AuditEvent, Environment, EnvironmentMisconfigured, StepRun
from .states import StepKind, StepState

logger = logging.getLogger(__name__)

REFUSAL_MEMORY_SECONDS = 60


def test_connection(environment: Environment, user) -> tuple[bool, str]:
    """Check `environment`'s URL and credentials against Atlas; returns (ok, one-line message)."""
    client = None
    try:
        client = environment.client()
        client.check_credentials()
    except (EnvironmentMisconfigured, AtlasError) as exc:
        ok, message = False, f"{environment.name}: {exc}"
    else:
        ok = True
        message = (
            f"{environment.name}: Atlas at {client.safe_base_url} accepted the credentials of "
            f"{environment.username} (password from {environment.password_env})"
        )
        role = drush_role(environment, client, remembered=False)
        ok = role.code != DrushRole.MISSING
        if role.code == DrushRole.OK:
            message += " and runs drush for it (verification's reports)"
        elif role.message:
            message += f"; {role.message}" if ok else f", but {role.message}"
    finally:
        if client is not None:
            client.close()
    AuditEvent.record(
        "environment_test_connection",
        user=user,
        environment=environment,
        outcome=AuditEvent.Outcome.OK if ok else AuditEvent.Outcome.ERROR,
        message=message,
    )
    return ok, message


# -- the credentials probe of previews ------------------------------------------------------------


class CredentialsRefused(EnvironmentMisconfigured):
    """Atlas refused the environment's credentials: just now (`seconds_ago` None), or within the
    last minute, remembered (`seconds_ago` since that refusal) and not asked again."""

    def __init__(self, message: str, seconds_ago: int | None = None) -> None:
        super().__init__(message)
        self.seconds_ago = seconds_ago


class CredentialsProbes:
    """Credentials probed at most once per environment: one of these per page or command (one
    `reports.preview` or `reports.blast_radius` call), handed to every step's preview.

    The first step of an environment asks Atlas (unless a refusal of these very credentials is
    remembered); the others get the same answer, refusal or failure included, without a request.
    """

    def __init__(self) -> None:
        self._answers: dict[int, Exception | None] = {}
        self._roles: dict[int, DrushRole] = {}

    def drush_role(self, environment: Environment, client) -> DrushRole:
        """`drush_role` once per environment (only the first update step's preview may ask)."""
        if environment.pk not in self._roles:
            self._roles[environment.pk] = drush_role(environment, client)
        return self._roles[environment.pk]

    def check(self, environment: Environment, client) -> None:
        """Raise CredentialsRefused (or the AtlasError the probe met) unless Atlas accepts them."""
        if environment.pk not in self._answers:
            try:
                check_credentials(environment, client)
            except (AtlasError, EnvironmentMisconfigured) as exc:
                self._answers[environment.pk] = exc
            else:
                self._answers[environment.pk] = None
        answer = self._answers[environment.pk]
        if answer is not None:
            raise answer


def check_credentials(environment: Environment, client) -> None:
    """The client's side-effect-free probe (Atlas's GETs are public, so reads prove nothing), unless
    Atlas refused these same credentials less than a minute ago.

    Only a refusal is remembered. An accepted probe is not: it cannot lock the account (only
    failed binds count towards a lockout), and a remembered acceptance would hide, for as long
    as it is kept, a password changed or expired in the directory since, which is exactly what a
    preview is there to show before a launch.
    """
    key = refusal_key(environment, environment.password())
    refused_at = _remembered(key)
    if refused_at is not None:
        ago = max(0, int(time.time() - refused_at))
        raise CredentialsRefused(
            f"Atlas {environment.name} refused these credentials {ago} s ago (username "
            f"{environment.username!r}, password variable {environment.password_env}); not asked "
            "again for a minute, so the service account is not locked out: fix the variable, "
            "a new password is tried at once",
            seconds_ago=ago,
        )
    try:
        client.check_credentials()
    except AuthenticationError:
        _remember(key)
        raise CredentialsRefused(
            f"Atlas {environment.name} refused the credentials (username {environment.username!r}, "
            f"password variable {environment.password_env}): fix the variable before launching"
        ) from None


# -- the drush role (verification) ---------------------------------------------------------------


@dataclass(frozen=True)
class DrushRole:
    """Whether Atlas runs drush for an environment's account: `code` decides, `message` says it
    (empty when there is nothing to say)."""

    OK = "ok"
    MISSING = "missing"
    NOT_NEEDED = "not_needed"  # verification is off
    NOT_CHECKED = "not_checked"  # an update step is verifying sites there now
    UNKNOWN = "unknown"  # Atlas could not be asked

    code: str
    message: str = ""
    remembered: bool = False


# How long the drush role's answer is kept: a missing role a minute (a grant shows soon), a role
# Atlas honoured ten minutes (each check writes to Atlas: refreshing a page must not repeat it).
DRUSH_MEMORY_SECONDS = {DrushRole.MISSING: REFUSAL_MEMORY_SECONDS, DrushRole.OK: 600}
NO_SITES = {"_id": {"$in": []}}  # the verification item's query for the check: no site matches


def drush_role(environment: Environment, client, *, remembered: bool = True) -> DrushRole:
    """Whether the account may run drush, which verification needs to ask the sites for reports.

    Atlas's GETs are public and its `drush` resource has no role of its own, so no read and no
    harmless write tells: only `POST /drush/<id>/execute` (`requires_auth('drush')`) answers 403
    without the role. So this executes the portal's own verification item (created as
    verification's first round would create it) with a query matching no site,
    `{"_id": {"$in": []}}`: Atlas's drush_prepare finds no site and runs nothing. Never while an
    update step of the environment is running: its verifier sets that item's query, which this
    would replace under it. The answer is remembered (`DRUSH_MEMORY_SECONDS`); `remembered=False`
    asks Atlas anyway (Test connection) and remembers the new answer.
    """
    if not environment.verify:
        return DrushRole(DrushRole.NOT_NEEDED)
    key = drush_key(environment)
    known = _cached(key) if remembered else None
    if known in DRUSH_MEMORY_SECONDS:
        return DrushRole(known, _drush_message(environment, known), remembered=True)
    running = StepRun.objects.filter(
        environment=environment, kind=StepKind.UPDATE_SITES, state=StepState.RUNNING
    ).values_list("number", flat=True)
    if running:
        return DrushRole(
            DrushRole.NOT_CHECKED, _drush_message(environment, DrushRole.NOT_CHECKED, running[0])
        )
    try:
        client.run_drush(client.drush_item(DRUSH_LABEL, DRUSH_COMMANDS), NO_SITES)
    except DrushRoleMissing:
        code = DrushRole.MISSING
    except AtlasError as exc:
        return DrushRole(
            DrushRole.UNKNOWN, f"could not ask Atlas {environment.name} for its drush role: {exc}"
        )
    else:
        code = DrushRole.OK
    _remember(key, code, DRUSH_MEMORY_SECONDS[code])
    return DrushRole(code, _drush_message(environment, code))


def _drush_message(environment: Environment, code: str, step: int | None = None) -> str:
    if code == DrushRole.MISSING:
        return (
            f"the account {environment.username!r} lacks Atlas's drush role: verification cannot ask "
            f"for reports; grant the role or `environment set {environment.name} --verify off`"
        )
    if code == DrushRole.NOT_CHECKED:
        return f"the drush role was not checked: step {step} is verifying {environment.name}'s sites now"
    return ""


def drush_key(environment: Environment) -> str:
    """The cache key of the drush role's answer: the account's at this Atlas (a changed URL or
    username is asked again), the password aside (the role is the account's, whatever it is)."""
    digest = salted_hmac(
        "releases.connectivity.drush",
        "\0".join((environment.api_url, environment.username)),
        secret=settings.SECRET_KEY,
        algorithm="sha256",
    ).hexdigest()
    return f"releases:atlas-drush-role:{environment.pk}:{digest}"


def refusal_key(environment: Environment, password: str) -> str:
    """The cache key of a refusal of these credentials by this Atlas. The password is only in an
    HMAC keyed with SECRET_KEY (never readable back, nor guessable without the key), so a changed
    password (or URL, or username) is another key: asked again at once."""
    digest = salted_hmac(
        "releases.connectivity.refusal",
        "\0".join((environment.api_url, environment.username, password)),
        secret=settings.SECRET_KEY,
        algorithm="sha256",
    ).hexdigest()
    return f"releases:atlas-refused:{environment.pk}:{digest}"


def refusal_cache() -> BaseCache:
    """Where refusals (and drush roles) are remembered: a cache every process of the portal reads.

    The default cache when it is shared. Django's default (none configured: LocMemCache) is
    per process, so each gunicorn worker and each `manage.py release` would ask Atlas again: then a
    file cache under VAR_DIR instead, shared by the processes of this host.
    """
    default = caches["default"]
    if not isinstance(default, LocMemCache | DummyCache):
        return default
    return _host_cache()


@lru_cache(maxsize=1)
def _host_cache() -> BaseCache:
    location = settings.VAR_DIR / "cache" / "atlas-refusals"
    return FileBasedCache(
        str(location), {"TIMEOUT": REFUSAL_MEMORY_SECONDS, "OPTIONS": {"MAX_ENTRIES": 1000}}
    )


def _cached(key: str):
    try:
        return refusal_cache().get(key)
    except Exception:  # a cache that fails must not stop a preview: the probe is asked instead
        logger.warning("could not read remembered Atlas answers", exc_info=True)
        return None


def _remembered(key: str) -> float | None:
    value = _cached(key)
    return value if isinstance(value, int | float) else None


def _remember(key: str, value=None, seconds: int = REFUSAL_MEMORY_SECONDS) -> None:
    try:
        refusal_cache().set(key, time.time() if value is None else value, seconds)
    except Exception:
        logger.warning("could not remember an Atlas answer", exc_info=True)
