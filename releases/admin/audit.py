"""The audit trail: read-only, filterable, times to the second, and a streamed CSV export."""

from django.contrib import admin

from ..models import AuditEvent
from .config import ReadOnlyAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The names are the copies taken when the event was recorded: they survive deletions."""

    list_display = (
        "at",
        "username",
        "action",
        "outcome",
        "plan_version",
        "step_number",
        "environment_name",
        "message",
    )
    list_filter = ("outcome", "action", "environment_name")
    search_fields = ("username", "action", "message", "plan_version")
    exclude = ("user", "plan", "step", "environment")
