"""One targeted site of one step."""

from django.db import models

from ..states import RollbackState, SiteState
from .querysets import SiteResultQuerySet


class SiteResult(models.Model):
    """One targeted site of one step: snapshotted at launch, updated as the step runs."""

    step = models.ForeignKey("releases.StepRun", on_delete=models.CASCADE, related_name="sites")
    site_id = models.CharField(max_length=24)
    sid = models.CharField(max_length=20, blank=True)
    path = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, blank=True, help_text="The site's Atlas status at snapshot.")
    update_group = models.IntegerField(null=True, blank=True)
    batch_index = models.PositiveSmallIntegerField(default=0)
    batch_name = models.CharField(max_length=100, blank=True)
    etag = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=12, choices=SiteState.choices, default=SiteState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True, help_text="Atlas's answer to the last attempt.")
    message = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Verification (Environment.verify): what the site itself last reported, and its page.
    patched_at = models.DateTimeField(null=True, blank=True, help_text="When Atlas answered its PATCH.")
    reported_version = models.CharField(max_length=40, blank=True)
    reported_error = models.BooleanField(
        null=True, blank=True, help_text="The report's drupal_system_status (pending updates count)."
    )
    reported_at = models.DateTimeField(null=True, blank=True)
    page_status = models.PositiveSmallIntegerField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    # What the site was on before the step changed it, and its rollback (`release rollback`).
    previous_profile = models.CharField(
        max_length=24, blank=True, help_text="The code item the site was on when the step froze its targets."
    )
    rollback = models.CharField(max_length=10, choices=RollbackState.choices, blank=True, default="")
    rollback_at = models.DateTimeField(
        null=True, blank=True, help_text="When Atlas answered its rollback PATCH."
    )
    rollback_answered_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the portal recorded that answer, on its own clock: the rollback's deadline runs from here.",
    )
    rollback_message = models.TextField(blank=True)
    needs_check = models.BooleanField(
        default=False,
        verbose_name="check in Atlas",
        help_text="Its instance may have been destroyed: an operator must look at it. Never retried.",
    )

    objects = SiteResultQuerySet.as_manager()

    class Meta:
        ordering = ["step", "batch_index", "id"]
        constraints = [models.UniqueConstraint(fields=["step", "site_id"], name="site_result_unique_site")]
        indexes = [
            # The engine picks the next sites by state within a step; counts group by state.
            models.Index(fields=["step", "state", "batch_index"], name="site_result_step_state"),
        ]

    def __str__(self) -> str:
        return f"{self.path or self.site_id}: {self.state}"
