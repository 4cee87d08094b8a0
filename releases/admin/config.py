"""The admin: environments and update groups are edited here (every edit audited); plans, steps,
site results and the audit trail are shown read-only. Operations go through `releases.services`."""

from django.contrib import admin
from django.db.models import Count, Q
from django.utils.html import format_html

from ..models import AuditEvent, Environment, ReleasePlan, SiteResult, StepRun, UpdateGroup
from .operations import ReleaseOperationsMixin


class AuditedAdmin(admin.ModelAdmin):
    """Record who changed what (field: [old, new]) for every save and delete."""

    def save_model(self, request, obj, form, change):
        before = {f: form.initial.get(f) for f in form.changed_data} if change else {}
        if isinstance(obj, UpdateGroup):
            obj.edited = True
            obj.updated_by = request.user.get_username()
        super().save_model(request, obj, form, change)
        changes = {f: [_plain(before.get(f)), _plain(form.cleaned_data.get(f))] for f in form.changed_data}
        AuditEvent.record(
            f"{obj._meta.model_name}_{'change' if change else 'add'}",
            user=request.user,
            environment=obj if isinstance(obj, Environment) else getattr(obj, "environment", None),
            parameters={"object": str(obj), "changes": changes},
        )

    def delete_model(self, request, obj):
        AuditEvent.record(
            f"{obj._meta.model_name}_delete", user=request.user, parameters={"object": str(obj)}
        )
        super().delete_model(request, obj)


def _plain(value):
    return value if isinstance(value, str | int | float | bool | dict | list | type(None)) else str(value)


@admin.register(Environment)
class EnvironmentAdmin(AuditedAdmin):
    list_display = ("name", "order", "api_url", "username", "password_env", "parallelism", "protected")


@admin.register(UpdateGroup)
class UpdateGroupAdmin(AuditedAdmin):
    list_display = ("environment", "step_number", "position", "name", "selector_display", "enabled", "edited")
    list_filter = ("environment", "step_number", "enabled")
    list_select_related = ("environment",)
    list_editable = ("position", "enabled")

    @admin.display(description="selector")
    def selector_display(self, obj):
        return format_html("<code>{}</code>", obj.selector())


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ReleasePlan)
class ReleasePlanAdmin(ReleaseOperationsMixin, ReadOnlyAdmin):
    """Read-only fields, plus the steps table and the operations (see `operations`)."""

    list_display = ("version", "release_commit", "final_tag", "created_by_username", "created_at")
    exclude = ("created_by",)

    def has_view_permission(self, request, obj=None):
        # Whoever may operate releases may see the plans they operate on.
        user = request.user
        return super().has_view_permission(request, obj) or any(
            user.has_perm(p) for p in ("releases.launch_step", "releases.finalize_release")
        )


@admin.register(StepRun)
class StepRunAdmin(ReadOnlyAdmin):
    list_display = ("plan", "number", "environment", "title", "state", "progress", "launched_by_username")
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

    @admin.display(description="done / failed / targeted")
    def progress(self, obj):
        return f"{obj.n_done} / {obj.n_failed} / {obj.n_sites}"


@admin.register(SiteResult)
class SiteResultAdmin(ReadOnlyAdmin):
    list_display = ("step", "path", "sid", "batch_name", "state", "attempts", "http_status", "finished_at")
    list_filter = ("state", "step__environment")
    list_select_related = ("step", "step__plan")
    search_fields = ("path", "sid", "site_id")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "username", "action", "outcome", "plan", "environment", "message")
    list_filter = ("outcome", "action", "environment")
    list_select_related = ("plan", "environment")
    search_fields = ("username", "action", "message")
