"""The audit trail: read-only, filterable by user, environment, release, action, outcome and date,
times to the second, and a CSV export that streams the filtered rows (no row limit).

CSV columns (fixed; scripts rely on them), one row per event, newest first:

    id            the event's id
    at            when, ISO 8601 in the portal's time zone, to the second (2026-11-27T04:01:02+00:00)
    username      who (copied when recorded: survives the user's deletion), or "system"
    action        what, e.g. launch, updategroup_reorder, environment_set
    outcome       ok, refused or error
    release       the plan's version, if any
    step          the runbook step number, if any
    environment   DEV, TEST, PROD, if any
    reason        the reason given (a skip's), if any
    message       what the portal said (a refusal's why, a step's end)
    parameters    the event's parameters as JSON (before/after values of a change, counts, …)
    channel       where it came from: admin, shell, api or system
    account       the operating-system account of a shell command (the API: the token's name)

A text cell that a spreadsheet would run as a formula (starting with =, +, -, @, a tab or a carriage
return) is written with a leading apostrophe.
"""

import csv
import json

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from ..models import AuditEvent
from .records import ReadOnlyAdmin

CSV_COLUMNS = [
    "id",
    "at",
    "username",
    "action",
    "outcome",
    "release",
    "step",
    "environment",
    "reason",
    "message",
    "parameters",
    "channel",
    "account",
]
_FIELDS = [
    "id",
    "at",
    "username",
    "action",
    "outcome",
    "plan_version",
    "step_number",
    "environment_name",
    "reason",
    "message",
    "parameters",
    "channel",
    "channel_account",
]
_PARAMETERS = _FIELDS.index("parameters")
CHUNK = 2000  # rows fetched from the database at a time while streaming
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def at_second(value) -> str:
    return timezone.localtime(value).isoformat(timespec="seconds") if value else ""


class _Echo:
    """A file whose write returns the line, so csv.writer hands each row to the response."""

    def write(self, value: str) -> str:
        return value


def csv_rows(queryset):
    """The CSV text of `queryset`, a line at a time, read in chunks (memory stays flat)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for row in queryset.values_list(*_FIELDS).iterator(chunk_size=CHUNK):
        values = list(row)
        values[1] = at_second(values[1])
        values[_PARAMETERS] = json.dumps(values[_PARAMETERS], sort_keys=True, default=str)
        yield writer.writerow([_cell(v) for v in values])


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The names are the copies taken when the event was recorded: they survive deletions."""

    list_display = (
        "at_display",
        "user_display",
        "action",
        "outcome",
        "where",
        "channel_display",
        "message",
    )
    list_filter = ("outcome", "action", "environment_name", "plan_version", "username", "channel", "at")
    date_hierarchy = "at"
    search_fields = ("username", "action", "message", "plan_version")
    exclude = ("user", "plan", "step", "environment")
    readonly_fields = ("at_display",)
    show_full_result_count = False  # a second COUNT over the whole trail on every page is wasted

    @admin.display(description="channel", ordering="channel")
    def channel_display(self, obj):
        return f"{obj.channel} ({obj.channel_account})" if obj.channel_account else obj.channel

    @admin.display(description="user", ordering="username")
    def user_display(self, obj):
        return obj.username

    @admin.display(description="release · step · env", ordering="plan_version")
    def where(self, obj):
        parts = [obj.plan_version, obj.step_number and f"step {obj.step_number}", obj.environment_name]
        return " · ".join(str(p) for p in parts if p) or "—"

    @admin.display(description="at", ordering="at")
    def at_display(self, obj):
        return timezone.localtime(obj.at).strftime("%Y-%m-%d %H:%M:%S")

    def get_urls(self):
        export = path(
            "export.csv",
            self.admin_site.admin_view(self.export_view),
            name="releases_auditevent_export",
        )
        return [export, *super().get_urls()]

    def export_view(self, request):
        """The changelist's rows (its filters and search applied) as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            queryset = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("unknown filter in the query string")
        response = StreamingHttpResponse(csv_rows(queryset), content_type="text/csv; charset=utf-8")
        stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="audit-trail-{stamp}.csv"'
        return response

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "export_query": request.GET.urlencode()}
        return super().changelist_view(request, extra_context)
