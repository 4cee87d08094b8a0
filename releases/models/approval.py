from django.conf import settings
from django.db import models
from django.db.models import Q

from .. import channel as channels


class LaunchRequest(models.Model):
    """An operation asked for on an environment under the two-person rule — a launch, or a resume
    or retry of failed sites (anything that sends writes again) — waiting for a second person's
    approval (`services.request_action`, `approvals.approve`)."""

    step = models.ForeignKey("releases.StepRun", on_delete=models.CASCADE, related_name="launch_requests")

    # Each choice class stands above the field that takes it.
    class Action(models.TextChoices):
        LAUNCH = "launch", "launch"
        RESUME = "resume", "resume"
        RETRY_FAILED = "retry_failed", "retry failed sites"
        ROLLBACK = "rollback", "roll back sites"

    action = models.CharField(max_length=16, choices=Action.choices, default=Action.LAUNCH)
    stage = models.BooleanField(default=False, help_text="Launch the environment's stage from this step.")
    confirmed = models.JSONField(
        null=True, blank=True, help_text="Sites per batch the requester saw when confirming."
    )
    sites = models.JSONField(
        null=True, blank=True, help_text="The sites (SiteResult ids) a rollback request puts back."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Copied so the record survives the user's deletion or rename.
    requested_by_username = models.CharField(max_length=150)
    requested_at = models.DateTimeField(auto_now_add=True)
    # Where the request came from: a shell approval from the same OS account is refused.
    requested_channel = channels.field()
    requested_account = models.CharField(max_length=150, blank=True)

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        WITHDRAWN = "withdrawn", "Withdrawn"

    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    decided_by_username = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            # A step waits for at most one approval at a time (the plan page shows it).
            models.UniqueConstraint(
                fields=["step"], condition=Q(state="pending"), name="one_pending_launch_request_per_step"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.step}: {self.what} requested by {self.requested_by_username} ({self.state})"

    @property
    def what(self) -> str:
        """The operation in words: "launch of the stage", "resume", "retry failed sites"."""
        if self.action == self.Action.LAUNCH:
            return "launch of the stage" if self.stage else "launch"
        return self.get_action_display()
