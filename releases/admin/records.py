"""The records of what happened, read-only (no add, change or delete): step runs, site results
and launch requests; `ReadOnlyAdmin` is also the audit trail's base (`audit`)."""

from django.contrib import admin
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from ..models import LaunchRequest, SiteResult, StepRun


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(StepRun)
class StepRunAdmin(ReadOnlyAdmin):
    list_display = (
        "plan",
        "number",
        "environment",
        "title",
        "state",
        "progress",
        "launched_by",
        "step_page",
    )
    list_filter = ("state", "environment", "plan")
    list_select_related = ("plan", "environment")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_sites=Count("sites"),
                n_done=Count("sites", filter=Q(sites__state__in=["succeeded", "skipped"])),
                n_failed=Count("sites", filter=Q(sites__state="failed")),
            )
        )

    @admin.display(description="done / failed / of")
    def progress(self, obj):
        return f"{obj.n_done} / {obj.n_failed} / {obj.n_sites}"

    @admin.display(description="launched by", ordering="launched_by_username")
    def launched_by(self, obj):
        return obj.launched_by_username

    @admin.display(description="page")
    def step_page(self, obj):
        return format_html(
            '<a href="{}">progress and sites</a>',
            reverse("admin:releases_releaseplan_step", args=[obj.plan_id, obj.number]),
        )


@admin.register(SiteResult)
class SiteResultAdmin(ReadOnlyAdmin):
    list_display = (
        "path", "step_short", "sid", "batch_name", "state", "needs_check", "attempts", "http_status", "finished",
    )  # fmt: skip
    list_display_links = ("path",)
    list_filter = ("state", "needs_check", "step__environment")
    list_select_related = ("step", "step__plan", "step__environment")
    search_fields = ("path", "sid", "site_id")

    @admin.display(description="step", ordering="step")
    def step_short(self, obj):
        return _step_short(obj.step)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, obj):
        return timezone.localtime(obj.finished_at).strftime("%Y-%m-%d %H:%M:%S") if obj.finished_at else "—"


@admin.register(LaunchRequest)
class LaunchRequestAdmin(ReadOnlyAdmin):
    """Launches requested under the two-person rule and how they were decided (read-only)."""

    list_display = ("request", "step_short", "what", "requested_by", "requested_at", "state", "decided_by")
    list_filter = ("state",)
    list_select_related = ("step", "step__plan", "step__environment")
    exclude = ("requested_by",)

    @admin.display(description="request", ordering="pk")
    def request(self, obj):
        return f"#{obj.pk}"

    @admin.display(description="step", ordering="step")
    def step_short(self, obj):
        return _step_short(obj.step)

    @admin.display(description="what")
    def what(self, obj):
        return obj.what

    @admin.display(description="requested by", ordering="requested_by_username")
    def requested_by(self, obj):
        return obj.requested_by_username

    @admin.display(description="decided by", ordering="decided_by_username")
    def decided_by(self, obj):
        return obj.decided_by_username or "—"


def _step_short(step) -> str:
    """ "2.8.5 · 12 PROD": the release, the runbook number and the environment (the title is long)."""
    return f"{step.plan.version} · {step.number} {step.environment or 'git'}"
