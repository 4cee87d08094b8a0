import os
import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from atlas.client import AtlasClient
from atlas.errors import InvalidSelector
from atlas.selectors import validate_where

from ..states import FailurePolicy
from .querysets import UpdateGroupQuerySet

_ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

# The secret variables a row names: field -> (suffix of its own variable, allow-list setting, label).
# A row may read only its own variable or one the process's operator listed explicitly, so a row
# edited by someone (or changed behind the validation) can never make the portal send another
# environment's password, or any other secret of the process, to the URL the row names.
SECRET_VARIABLES = {
    "password_env": ("PASSWORD", "ATLAS_PASSWORD_VARIABLES", "password variable"),
    "slack_webhook_env": ("SLACK_WEBHOOK", "ATLAS_SLACK_VARIABLES", "Slack webhook variable"),
}


def variable_key(name: str) -> str:
    """The part of ATLAS_<KEY>_PASSWORD an environment name gives (`prod` and `PROD` give the same)."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def own_variable(name: str, field: str) -> str:
    return f"ATLAS_{variable_key(name)}_{SECRET_VARIABLES[field][0]}"


class EnvironmentMisconfigured(Exception):
    """The environment row cannot produce a working client (e.g. its password variable is unset)."""


class InvalidGroupSelector(EnvironmentMisconfigured):
    """An update group's selector is not one the portal sends (saved behind the admin's validation)."""


def _seconds(verbose_name=None, *, default: float, minimum: float = 0, **options) -> models.FloatField:
    """A setting that is a duration in seconds, never below `minimum`."""
    return models.FloatField(
        verbose_name, default=default, validators=[MinValueValidator(minimum)], **options
    )


class Environment(models.Model):
    """One Atlas instance. The password is never stored: only the name of the variable holding it."""

    name = models.CharField(max_length=16, unique=True, help_text="DEV, TEST or PROD.")
    order = models.PositiveSmallIntegerField(default=0, help_text="Promotion order: DEV 1, TEST 2, PROD 3.")
    api_url = models.URLField(
        "Atlas API URL", help_text="Base URL of the Atlas API, e.g. https://atlas/atlas/"
    )
    site_url = models.URLField("site base URL", blank=True, help_text="Public base URL of the sites.")
    username = models.CharField("Atlas username", max_length=150)
    password_env = models.CharField(
        "password variable",
        max_length=100,
        help_text="Name of the environment variable that holds the Atlas password (never the password).",
    )
    verify_tls = models.BooleanField("verify TLS", default=True)
    parallelism = models.PositiveSmallIntegerField(
        "parallel requests",
        default=4,
        validators=[MinValueValidator(1)],
        help_text="Atlas writes in flight at once.",
    )
    batch_pause_seconds = _seconds("pause between batches (s)", default=5.0)
    failure_threshold_count = models.PositiveIntegerField(
        null=True, blank=True, help_text="Pause the step when this many sites have failed (empty: no limit)."
    )
    failure_threshold_percent = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Pause the step when this share of its sites has failed (empty: no limit).",
    )
    failure_policy = models.CharField(
        max_length=8,
        choices=FailurePolicy.choices,
        default=FailurePolicy.PAUSE,
        help_text="What a step becomes when sites still fail after retries.",
    )
    deploy_wait_seconds = _seconds(
        "deploy wait (s)",
        default=60.0,
        help_text="Atlas answers before its code deploy finishes: wait this long before touching sites.",
    )
    pool_wait_seconds = _seconds(
        "pool refill wait (s)",
        default=600.0,
        help_text="After deleting available sites, wait up to this long for the pool to refill.",
    )
    read_timeout_seconds = _seconds(default=30.0, minimum=1)
    max_attempts = models.PositiveSmallIntegerField(default=5, validators=[MinValueValidator(1)])
    slack_webhook_env = models.CharField(
        "Slack webhook variable",
        max_length=100,
        blank=True,
        help_text="Name of the environment variable holding the Slack webhook URL (optional).",
    )
    protected = models.BooleanField(
        default=False, help_text="Typed confirmation and the protected-launch permission are required (PROD)."
    )
    verify = models.BooleanField(
        "verify updated sites",
        default=True,
        help_text="A site of an update step succeeds only once its own report shows the release's "
        "version with no error-level status and its page answers 200 (off: an answered PATCH "
        "is enough, for an Atlas account without the drush role).",
    )
    verify_timeout_seconds = _seconds(
        "verification deadline (s)",
        default=900.0,
        minimum=1,
        help_text="A site not verified this long after its PATCH was answered has failed (Atlas's "
        "task limit is 900 s).",
    )
    max_unverified = models.PositiveIntegerField(
        "sites updating at once",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="At most this many sites PATCHed and not yet verified at any moment (Atlas's update "
        "queue is the real throttle). Empty: four times the parallel requests.",
    )
    canary = models.BooleanField(
        default=False,
        help_text="An update step pauses once its first batch is verified, until an operator "
        "continues it (PROD's default).",
    )
    two_person = models.BooleanField(
        "two-person rule",
        default=False,
        help_text="A launch here is requested by one user and approved by another who holds the "
        "protected-launch permission (never the requester).",
    )

    class Meta:
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.name and not _NAME.match(self.name):
            raise ValidationError({"name": "must be upper case letters, digits and _, such as PROD"})
        errors = {}
        for field in SECRET_VARIABLES:
            value = getattr(self, field)
            if value and not _ENV_VAR.match(value):
                errors[field] = "must be an environment variable name such as ATLAS_PROD_PASSWORD"
            elif value:
                refusal = self.variable_refusal(field)
                if refusal:
                    errors[field] = refusal
        if errors:
            raise ValidationError(errors)

    def variable_refusal(self, field: str) -> str:
        """Why this row may not read the variable its `field` names ('' when it may).

        Its own ATLAS_<NAME>_<SUFFIX>, or one in the allow-list setting; never a variable that
        belongs to another environment (its own password or Slack variable), even if listed.
        """
        value = getattr(self, field)
        _, setting, label = SECRET_VARIABLES[field]
        others = Environment.objects.exclude(pk=self.pk).values_list("name", flat=True)
        for other in others:
            if value in (own_variable(other, f) for f in SECRET_VARIABLES):
                return f"{self.name}: the {label} {value} belongs to environment {other}"
        if value == own_variable(self.name, field) or value in getattr(settings, setting, []):
            return ""
        return (
            f"{self.name}: the {label} {value} is not allowed: use {own_variable(self.name, field)} "
            f"or a variable listed in the {setting} setting"
        )

    def _secret(self, field: str) -> str:
        """The value of the secret variable `field` names, after checking the row may read it."""
        name = getattr(self, field)
        refusal = self.variable_refusal(field)
        if refusal:
            raise EnvironmentMisconfigured(refusal)
        value = os.environ.get(name)
        if not value:
            label = SECRET_VARIABLES[field][2]
            raise EnvironmentMisconfigured(f"{self.name}: the {label} {name} is not set in the environment")
        return value

    def slack_webhook_url(self) -> str:
        """The webhook URL (never log it); raises EnvironmentMisconfigured like `password`."""
        return self._secret("slack_webhook_env")

    def password(self) -> str:
        return self._secret("password_env")

    def client(self) -> AtlasClient:
        return AtlasClient(
            self.api_url,
            username=self.username,
            password=self.password(),
            environment=self.name,
            verify=self.verify_tls,
            read_timeout=self.read_timeout_seconds,
            max_attempts=self.max_attempts,
            pool_size=max(16, self.parallelism * 2),
        )

    def unverified_limit(self) -> int:
        """At most this many of the environment's sites PATCHed and not yet verified."""
        return self.max_unverified or 4 * max(1, self.parallelism)

    def threshold_description(self) -> str:
        limits = []
        if self.failure_threshold_count is not None:
            limits.append(f"{self.failure_threshold_count} sites")
        if self.failure_threshold_percent is not None:
            limits.append(f"{self.failure_threshold_percent:g}%")
        return " or ".join(limits) or "none"

    def threshold_reached(self, failed: int, targeted: int) -> bool:
        if failed == 0:
            return False
        if self.failure_threshold_count is not None and failed >= self.failure_threshold_count:
            return True
        percent = self.failure_threshold_percent
        return percent is not None and targeted > 0 and failed * 100.0 / targeted >= percent


class UpdateGroup(models.Model):
    """A named, ordered site selector of one environment, used by one runbook step."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="update_groups")
    step_number = models.PositiveSmallIntegerField(
        help_text="The runbook step (1–14) that uses this selector."
    )
    position = models.PositiveSmallIntegerField(default=0, help_text="Order of the batch within the step.")
    name = models.CharField(max_length=100)
    status = models.CharField(
        max_length=20, blank=True, help_text="Site status, with the update group below."
    )
    update_group = models.PositiveSmallIntegerField(null=True, blank=True)
    where = models.JSONField(
        null=True, blank=True, help_text='A full Atlas selector instead, e.g. {"status": "launched"}.'
    )
    enabled = models.BooleanField(default=True)
    edited = models.BooleanField(
        default=False, help_text="Changed by an operator: `loadrunbook --update` keeps it."
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True)

    objects = UpdateGroupQuerySet.as_manager()

    class Meta:
        ordering = ["environment__order", "step_number", "position", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "step_number", "name"], name="update_group_unique_name"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.environment} step {self.step_number}: {self.name}"

    def selector(self) -> dict:
        """The selector as stored (for display); `checked_selector` before sending it to Atlas."""
        if self.where:
            return dict(self.where) if isinstance(self.where, dict) else self.where
        selector: dict = {}
        if self.status:
            selector["status"] = self.status
        if self.update_group is not None:
            selector["update_group"] = self.update_group
        return selector

    def checked_selector(self) -> dict:
        """The selector, validated again: a row saved outside the admin form (the shell, a data
        migration, SQL) must not reach Atlas with `$where`, a typo, or nothing at all."""
        selector = self.selector()
        try:
            validate_where(selector)
        except InvalidSelector as exc:
            raise InvalidGroupSelector(self._refusal(str(exc))) from None
        if not selector:
            raise InvalidGroupSelector(self._refusal("an empty selector would match every site"))
        return selector

    def _refusal(self, problem: str) -> str:
        return (
            f"{self.environment.name} update group {self.name!r} (step {self.step_number}) has an "
            f"invalid selector: {problem}; fix it in the admin"
        )

    def clean(self) -> None:
        if self.where is not None:
            try:
                validate_where(self.where)
            except InvalidSelector as exc:
                raise ValidationError({"where": str(exc)}) from None
            if not self.where:
                raise ValidationError({"where": "an empty selector would match every site"})
        elif not self.status and self.update_group is None:
            raise ValidationError("give a status and/or update group, or a full selector")
