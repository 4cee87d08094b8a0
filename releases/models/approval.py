from django.conf import settings
from django.db import models
from django.db.models import Q


class LaunchRequest(models.Model):
    """A launch asked for on an environment under the two-person rule, waiting for a second
    person's approval (`services.request_launch`, `services.approve`)."""

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        WITHDRAWN = "withdrawn", "Withdrawn"

    step = models.ForeignKey("releases.StepRun", on_delete=models.CASCADE, related_name="launch_requests")
    stage = models.BooleanField(default=False, help_text="Launch the environment's stage from this step.")
    confirmed = models.JSONField(
        null=True, blank=True, help_text="Sites per batch the requester saw when confirming."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Copied so the record survives the user's deletion or rename.
    requested_by_username = models.CharField(max_length=150)
    requested_at = models.DateTimeField(auto_now_add=True)
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
        return f"{self.step}: requested by {self.requested_by_username} ({self.state})"
