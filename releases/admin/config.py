"""The admin: environments are edited here (every edit audited); plans, steps and site results
are shown read-only. Update groups are in `groups`, the audit trail in `audit`. Operations go
through `releases.services`."""

from django import forms
from django.contrib import admin
from django.db.models import Count, Q

from .. import services
from ..models import AuditEvent, Environment, ReleasePlan, SiteResult, StepRun
from .operations import ReleaseOperationsMixin
from .report import ReleaseReportMixin


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
    list_display = ("name", "order", "api_url", "username", "password_env", "parallelism", "protected")

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


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ReleasePlan)
class ReleasePlanAdmin(ReleaseReportMixin, ReleaseOperationsMixin, ReadOnlyAdmin):
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
