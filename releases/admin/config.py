"""The admin: environments and update groups are edited here (every edit audited); steps, site
results, launch requests and the audit trail are shown read-only (plans: `plans`)."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import Count, Q
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html

from .. import services
from ..connectivity import test_connection
from ..models import AuditEvent, Environment, LaunchRequest, SiteResult, StepRun, UpdateGroup


def _with_user(form_class, request):
    """The form class with the acting user attached, for permission checks in `clean`."""
    return type(form_class.__name__, (form_class,), {"user": request.user})


class EnvironmentForm(forms.ModelForm):
    """Refuses, as a form error naming the missing permission, what `environment set` refuses."""

    user = None  # set per request by EnvironmentAdmin.get_form

    def clean(self):
        cleaned = super().clean()
        requested = {f: cleaned[f] for f in self.changed_data if f in cleaned}
        if requested and self.instance.pk is not None:
            # The instance still holds the stored values here (the form copies them in later).
            try:
                services.check_environment_change(self.user, self.instance, requested, via="admin")
            except services.ActionRefused as exc:
                self.refused = True
                raise forms.ValidationError(str(exc)) from None
        return cleaned

    def _post_clean(self):
        super()._post_clean()
        # Model validation (e.g. another environment's password variable) is refused: audit it too.
        if self._errors and self.instance.pk is not None and not getattr(self, "refused", False):
            messages = [f"{field}: {' '.join(errors)}" for field, errors in self._errors.items()]
            AuditEvent.record(
                "environment_set",
                user=self.user,
                environment=Environment.objects.get(pk=self.instance.pk),
                outcome=AuditEvent.Outcome.REFUSED,
                parameters={"requested": {f: self.data.get(f) for f in self.changed_data}},
                message=f"{self.instance.name}: {'; '.join(messages)} (via admin)",
            )


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    """Changes go through `services.change_environment`, exactly as `manage.py environment set`.

    No add and no delete here: the runbook's steps name DEV, TEST and PROD, which `loadrunbook`
    creates; steps reference their environment (PROTECT) and update groups cascade from it.
    """

    form = EnvironmentForm
    list_display = (
        "name",
        "order",
        "api_url",
        "username",
        "password_env",
        "parallelism",
        "protected",
        "two_person",
    )
    actions = ["test_connection"]

    @admin.action(description="Test connection (credentials check, changes nothing)", permissions=["change"])
    def test_connection(self, request, queryset):
        # Sends the environment's credentials to its URL (one request each), hence `change`.
        for environment in queryset:
            ok, message = test_connection(environment, request.user)
            self.message_user(request, message, messages.SUCCESS if ok else messages.ERROR)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_form(self, request, obj=None, **kwargs):
        return _with_user(super().get_form(request, obj, **kwargs), request)

    def save_model(self, request, obj, form, change):
        requested = {f: form.cleaned_data[f] for f in form.changed_data if f in form.cleaned_data}
        services.change_environment(obj, request.user, requested, via="admin")
        obj.refresh_from_db()


class UpdateGroupForm(forms.ModelForm):
    user = None  # set per request by UpdateGroupAdmin

    def clean(self):
        cleaned = super().clean()
        if self.has_changed():
            adding = self.instance.pk is None
            environments = [cleaned.get("environment")]
            if not adding:
                environments.append(self.instance.environment)  # moving a group off PROD, too
            try:
                services.check_update_group_change(
                    self.user,
                    environments,
                    "add" if adding else "change",
                    parameters={
                        "object": str(self.instance) if not adding else "",
                        "fields": self.changed_data,
                    },
                )
            except services.ActionRefused as exc:
                raise forms.ValidationError(str(exc)) from None
        return cleaned


@admin.register(UpdateGroup)
class UpdateGroupAdmin(admin.ModelAdmin):
    """Every add, change and delete is audited; those on a protected environment need the
    protected permission (the selectors decide which PROD sites a step changes or deletes)."""

    form = UpdateGroupForm
    list_display = ("environment", "step_number", "position", "name", "selector_display", "enabled", "edited")
    list_filter = ("environment", "step_number", "enabled")
    list_select_related = ("environment",)
    list_editable = ("position", "enabled")

    @admin.display(description="selector")
    def selector_display(self, obj):
        return format_html("<code>{}</code>", obj.selector())

    def get_form(self, request, obj=None, **kwargs):
        return _with_user(super().get_form(request, obj, **kwargs), request)

    def get_changelist_form(self, request, **kwargs):
        # The changelist's inline edits (list_editable) are checked by the same form.
        kwargs.setdefault("form", self.form)
        return _with_user(super().get_changelist_form(request, **kwargs), request)

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        if obj is None or not allowed:
            return allowed
        return not services.update_group_refusal(request.user, [obj.environment], "delete")

    def save_model(self, request, obj, form, change):
        before = {f: form.initial.get(f) for f in form.changed_data} if change else {}
        obj.edited = True
        obj.updated_by = request.user.get_username()
        super().save_model(request, obj, form, change)
        changes = {f: [_plain(before.get(f)), _plain(form.cleaned_data.get(f))] for f in form.changed_data}
        AuditEvent.record(
            f"updategroup_{'change' if change else 'add'}",
            user=request.user,
            environment=obj.environment,
            parameters={"object": str(obj), "changes": changes},
        )

    def delete_view(self, request, object_id, extra_context=None):
        # Audit a refused delete too (Django would answer 403 without a trace).
        obj = self.get_object(request, unquote(object_id))
        if request.method == "POST" and obj is not None and super().has_delete_permission(request, obj):
            try:
                services.check_update_group_change(
                    request.user, [obj.environment], "delete", parameters={"object": str(obj)}
                )
            except services.ActionRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return redirect(reverse("admin:releases_updategroup_change", args=[obj.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        if perms_needed and request.POST.get("post"):
            # The confirmed bulk delete that Django is about to refuse (403): audit the refusal.
            refusal = services.update_group_refusal(request.user, [g.environment for g in objs], "delete")
            AuditEvent.record(
                "updategroup_delete",
                user=request.user,
                outcome=AuditEvent.Outcome.REFUSED,
                parameters={"objects": [str(g) for g in objs]},
                message=refusal or f"{request.user.get_username()} may not delete these update groups",
            )
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj):
        services.delete_update_groups(request.user, [obj], via="admin")

    def delete_queryset(self, request, queryset):
        # The changelist's "delete selected": one audit event per group, never a silent bulk delete.
        services.delete_update_groups(request.user, queryset.select_related("environment"), via="admin")


def _plain(value):
    return value if isinstance(value, str | int | float | bool | dict | list | type(None)) else str(value)


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
        "launched_by_username",
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

    @admin.display(description="done / failed / targeted")
    def progress(self, obj):
        return f"{obj.n_done} / {obj.n_failed} / {obj.n_sites}"

    @admin.display(description="page")
    def step_page(self, obj):
        return format_html(
            '<a href="{}">progress and sites</a>',
            reverse("admin:releases_releaseplan_step", args=[obj.plan_id, obj.number]),
        )


@admin.register(SiteResult)
class SiteResultAdmin(ReadOnlyAdmin):
    list_display = ("step", "path", "sid", "batch_name", "state", "attempts", "http_status", "finished_at")
    list_filter = ("state", "step__environment")
    list_select_related = ("step", "step__plan")
    search_fields = ("path", "sid", "site_id")


@admin.register(LaunchRequest)
class LaunchRequestAdmin(ReadOnlyAdmin):
    """Launches requested under the two-person rule and how they were decided (read-only)."""

    list_display = ("step", "requested_by_username", "requested_at", "stage", "state", "decided_by_username")
    list_filter = ("state",)
    list_select_related = ("step", "step__plan")
    exclude = ("requested_by",)


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
