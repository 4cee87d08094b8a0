"""Personal API tokens: a staff user's named, expiring, revocable credentials for the API.

Only a SHA-256 of the token is stored; the token itself is shown once, when it is created
(`tokens.create`). A token acts with its user's permissions, never more, and a read-only token
only reads."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

PREFIX = "erp_"  # recognisable in a leaked file or a secret scanner's rules


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self, now=None):
        """Neither revoked nor expired."""
        return self.filter(revoked_at__isnull=True, expires_at__gt=now or timezone.now())

    def visible_to(self, user):
        """A superuser sees everyone's tokens; anyone else only their own."""
        return self if user.is_superuser else self.filter(user=user)


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(
        max_length=64, help_text="What the token is for, e.g. `ci` or `laptop` (recorded in the audit trail)."
    )
    hashed = models.CharField(max_length=64, unique=True, editable=False)  # sha256 hex of the token
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.CharField(max_length=150, blank=True, editable=False)
    read_only = models.BooleanField(default=False, help_text="Only reads: every change is refused.")

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        ordering = ["user__username", "name", "-created_at"]
        constraints = [
            # `token revoke --user U --name N` names one token: names are unique among a user's
            # tokens not yet revoked. (Authentication looks tokens up by `hashed`, unique above.)
            models.UniqueConstraint(
                fields=["user", "name"], condition=Q(revoked_at__isnull=True), name="api_token_active_name"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user.get_username()}/{self.name}"

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= timezone.now() else "active"
