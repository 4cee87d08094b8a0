"""The admin: environments are edited here (every edit audited); steps, site results and launch
requests are shown read-only. Update groups are in `groups`, the audit trail in `audit`, plans in
`plans`. Operations go through `releases.services`."""

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from .. import services
from ..connectivity import test_connection
from ..models import AuditEvent, Environment, LaunchRequest, SiteResult, StepRun


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
