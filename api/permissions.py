"""Who may call what. Every endpoint needs a personal token of an active staff account; a
read-only token only reads; reading needs the model's view permission (as the admin's pages do).
Changes are judged by `releases.services` itself, so the API refuses exactly what the admin and
the shell refuse, and audits the refusal the same way."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission

from .models import ApiToken


class TokenUser(BasePermission):
    """Authenticated with a personal token (no session, no anonymous access)."""

    def has_permission(self, request, view) -> bool:
        if not isinstance(request.auth, ApiToken):
            raise exceptions.NotAuthenticated()
        return True


class TokenScope(BasePermission):
    """A read-only token reads and does nothing else."""

    def has_permission(self, request, view) -> bool:
        if request.method not in SAFE_METHODS and request.auth.read_only:
            raise exceptions.PermissionDenied(
                f"token {request.auth.name!r} is read-only", code="read_only_token"
            )
        return True


class CanRead(BasePermission):
    """Reading needs the view's `read_permission` (e.g. releases.view_releaseplan)."""

    def has_permission(self, request, view) -> bool:
        needed = getattr(view, "read_permission", None)
        if request.method in SAFE_METHODS and needed and not request.user.has_perm(needed):
            raise exceptions.PermissionDenied(
                f"{request.user.get_username()} lacks the permission {needed}", code="permission_denied"
            )
        return True
