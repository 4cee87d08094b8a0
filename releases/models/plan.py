"""A release plan: one row per release version, its steps in `steps.py`. The models' other names
are importable from here too, as they were when this module held them all."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from ..states import ACTIVE, DONE, StepState
from .sites import SiteResult
from .steps import ROLLBACK_FROM, StepRun, TransitionRefused, manual_gate
from .worker import lease

__all__ = [
    "ROLLBACK_FROM",
    "SHA_VALIDATOR",
    "VERSION_VALIDATOR",
    "ReleasePlan",
    "SiteResult",
    "StepRun",
    "TransitionRefused",
    "lease",
    "manual_gate",
]

SHA_VALIDATOR = RegexValidator(r"^[0-9a-f]{40}$", "must be a full 40-character lowercase hex commit SHA")
VERSION_VALIDATOR = RegexValidator(r"^\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$", "must look like 2.8.5")


class ReleasePlan(models.Model):
    version = models.CharField(max_length=40, unique=True, validators=[VERSION_VALIDATOR])
    profile_name = models.CharField(max_length=100, default="express")
    git_url = models.CharField(max_length=300, help_text="Must contain .git (Atlas's git_url rule).")
    release_branch = models.CharField(max_length=200)
    release_commit = models.CharField(
        max_length=40, validators=[SHA_VALIDATOR], help_text="Release-branch HEAD deployed before finalizing."
    )
    final_tag = models.CharField(max_length=100, blank=True)
    final_commit = models.CharField(max_length=40, blank=True, validators=[SHA_VALIDATOR])
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_username = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("launch_step", "Can launch, pause, resume, abort, retry and skip release steps"),
            ("launch_protected", "Can run release steps on protected environments (PROD)"),
            ("finalize_release", "Can record the finalized release (tag and commit)"),
        ]

    def __str__(self) -> str:
        return self.version

    def commit_for(self, source: str) -> str:
        """The commit a step deploys: the release-branch HEAD, or the finalized commit."""
        return self.final_commit if source == "final" else self.release_commit

    @property
    def state(self) -> str:
        states = [s.state for s in self.steps.all()]
        if any(s in ACTIVE for s in states):
            return StepState.RUNNING if StepState.RUNNING in states else StepState.PAUSED
        if StepState.FAILED in states:
            return StepState.FAILED
        if all(s in DONE for s in states):
            return StepState.SUCCEEDED
        return StepState.PENDING
