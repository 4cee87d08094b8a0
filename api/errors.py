"""Errors as JSON: `{"code": "...", "detail": "..."}` with a stable code to decide by and a
sentence for people (validation errors add `fields`). A refusal of the domain
(`services.ActionRefused`) is 403 `permission_denied` when the user lacks a permission the
operation needs, otherwise 409 with the operation's code (`launch_refused`, `approve_refused`, …);
a refusal that carries its own `code` keeps it."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.views import exception_handler

from atlas.errors import AtlasError
from releases import services
from releases.models import EnvironmentMisconfigured, TransitionRefused

logger = logging.getLogger(__name__)


class Refused(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "refused"

    def __init__(self, detail: str, code: str, status_code: int = status.HTTP_409_CONFLICT):
        super().__init__(detail, code)
        self.status_code = status_code


class NotFound(exceptions.NotFound):
    def __init__(self, detail: str, code: str = "not_found"):
        super().__init__(detail, code)


def refusal(exc: Exception, user, operation: str, environment=None, *, action: str | None = None) -> Refused:
    """The API's answer to a refusal of `operation` (a `services.PERMISSIONS` key unless `action`
    names it): 403 when the user lacks a permission, 409 otherwise."""
    own = getattr(exc, "code", "")
    if isinstance(own, str) and own and own != "refused":  # "refused": the uncoded default
        return Refused(str(exc), own, _status_of(own))
    action = action or operation
    if action in services.PERMISSIONS and services.permission_refusal(user, action, environment):
        return Refused(str(exc), "permission_denied", status.HTTP_403_FORBIDDEN)
    return Refused(str(exc), f"{operation}_refused")


def _status_of(code: str) -> int:
    return (
        status.HTTP_403_FORBIDDEN
        if code in ("permission_denied", "own_request")
        else status.HTTP_409_CONFLICT
    )


def handler(exc, context):
    """REST_FRAMEWORK's EXCEPTION_HANDLER."""
    if isinstance(exc, services.ActionRefused | TransitionRefused):
        exc = Refused(str(exc), getattr(exc, "code", "") or "refused")
    elif isinstance(exc, EnvironmentMisconfigured):
        exc = Refused(str(exc), "environment_misconfigured")
    elif isinstance(exc, AtlasError):
        exc = Refused(f"Atlas error: {exc}", "atlas_error", status.HTTP_502_BAD_GATEWAY)
    elif isinstance(exc, Http404):
        exc = NotFound(str(exc) or "not found")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's 500 (logged with its traceback)
    response.data = _body(exc, response.data)
    return response


def _body(exc: exceptions.APIException, data) -> dict:
    if isinstance(exc, exceptions.ValidationError):
        fields = data if isinstance(data, dict) else {"non_field_errors": data}
        lines = [f"{name}: {' '.join(map(str, _flat(errors)))}" for name, errors in fields.items()]
        return {"code": "invalid", "detail": "; ".join(lines), "fields": fields}
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else "error"
    detail = data.get("detail", data) if isinstance(data, dict) else data
    return {"code": code, "detail": str(detail)}


def _flat(errors):
    if isinstance(errors, dict):
        return [f"{k}: {' '.join(map(str, _flat(v)))}" for k, v in errors.items()]
    if isinstance(errors, list):
        return [item for error in errors for item in _flat(error)]
    return [errors]
