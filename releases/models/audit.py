from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One thing that happened or was refused. Append-only: the admin shows it read-only."""

    class Outcome(models.TextChoices):
        OK = "ok", "Done"
        REFUSED = "refused", "Refused"
        ERROR = "error", "Error"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # Copied so the record survives the user's deletion or rename.
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.OK)
    plan = models.ForeignKey("releases.ReleasePlan", null=True, blank=True, on_delete=models.SET_NULL)
    step = models.ForeignKey("releases.StepRun", null=True, blank=True, on_delete=models.SET_NULL)
    environment = models.ForeignKey("releases.Environment", null=True, blank=True, on_delete=models.SET_NULL)
    parameters = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    message = models.TextField(blank=True)

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
            raise ValueError("audit events are append-only")
        super().save(*args, **kwargs)

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
        if user is not None and not username:
            username = user.get_username()
        if step is not None:
            plan = plan or step.plan
            environment = environment or step.environment
        return cls.objects.create(
            action=action,
            user=user,
            username=username or "system",
            outcome=outcome,
            plan=plan,
            step=step,
            environment=environment,
            parameters=parameters or {},
            reason=reason,
            message=message[:4000],
        )
