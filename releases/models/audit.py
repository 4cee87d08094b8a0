from django.conf import settings
from django.db import models

from .. import channel as channels


class AppendOnly(ValueError):
    """An attempt to change or delete an audit event."""


class AuditEventQuerySet(models.QuerySet):
    """Queryset writes bypass `save`/`delete`: refuse them too (PostgreSQL also has a trigger)."""

    def update(self, **kwargs):
        raise AppendOnly("audit events are append-only: they cannot be updated")

    def bulk_update(self, objs, fields, batch_size=None):
        # Refused before Django opens its transaction, so the caller's stays usable.
        raise AppendOnly("audit events are append-only: they cannot be updated")

    def delete(self):
        raise AppendOnly("audit events are append-only: they cannot be deleted")


def _reference(to: str, **kwargs):
    """A link to the row an event concerns that the database never follows on delete.

    Deleting a plan, step, environment or user must not rewrite audit rows (SET_NULL would, and the
    PostgreSQL trigger refuses any UPDATE), so there is no constraint and no cascade: the id stays,
    and the names it referred to are copied into the event when it is recorded.
    """
    return models.ForeignKey(
        to,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        **kwargs,
    )


class AuditEvent(models.Model):
    """One thing that happened or was refused. Append-only: the admin shows it read-only, the ORM
    refuses updates and deletes, and on PostgreSQL a trigger refuses them (migration 0002)."""

    class Outcome(models.TextChoices):
        OK = "ok", "Done"
        REFUSED = "refused", "Refused"
        ERROR = "error", "Error"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = _reference(settings.AUTH_USER_MODEL)
    # Copied so the record survives the user's deletion or rename.
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.OK)
    plan = _reference("releases.ReleasePlan")
    step = _reference("releases.StepRun")
    environment = _reference("releases.Environment")
    # Copied too: the plan, step or environment may be deleted (or renamed) later.
    plan_version = models.CharField("release", max_length=40, blank=True)
    step_number = models.PositiveSmallIntegerField("step", null=True, blank=True)
    environment_name = models.CharField("environment", max_length=16, blank=True)
    channel = channels.field(
        help_text="Where the action came from: the admin, the shell (manage.py), the API, or the system."
    )
    channel_account = models.CharField(
        "account",
        max_length=150,
        blank=True,
        help_text="The operating-system account that ran a shell command, or the API token's name.",
    )
    parameters = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    message = models.TextField(blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # The plan's timeline and the step's history read events by plan/step, newest first.
            models.Index(fields=["plan", "at"], name="audit_plan_at"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} ({self.outcome})"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise AppendOnly("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnly("audit events are append-only: they cannot be deleted")

    @classmethod
    def record(
        cls,
        action: str,
        *,
        user=None,
        username: str = "",
        outcome: str = Outcome.OK,
        plan=None,
        step=None,
        environment=None,
        parameters: dict | None = None,
        reason: str = "",
        message: str = "",
    ) -> "AuditEvent":
        via = channels.current()
        if user is not None and not username:
            username = user.get_username()
        if step is not None:
            plan = plan or step.plan
            environment = environment or step.environment
        return cls.objects.create(
            action=action,
            user=user,
            username=(username or "system")[:150],  # a refused unknown name may be any length
            outcome=outcome,
            plan=plan,
            step=step,
            environment=environment,
            plan_version=plan.version if plan is not None else "",
            step_number=step.number if step is not None else None,
            environment_name=environment.name if environment is not None else "",
            channel=via.name,
            channel_account=via.account,
            parameters=parameters or {},
            reason=reason,
            message=message[:4000],
        )
