"""Release plans: the list (state, current step, progress per environment), creating a release
through `services.create_plan` exactly as `release create` does, and the plan page (operations,
launching and the step pages come from the mixins)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import Count, OuterRef, Subquery
from django.utils.html import format_html, format_html_join

from .. import guidance, progress, services
from ..models import LaunchRequest, ReleasePlan
from ..roles import FINALIZE_RELEASE, LAUNCH_STEP
from .launching import LaunchMixin
from .operations import ReleaseOperationsMixin
from .report import ReleaseReportMixin
from .rollback import RollbackMixin
from .steps import StepPagesMixin


class ReleasePlanCreationForm(forms.ModelForm):
    """The fields of `release create`. Validation is the service's own: the plan is created by
    `services.create_plan` when the form is checked, and its refusal lands on the field it names."""

    user = None  # set per request by ReleasePlanAdmin.get_form

    # No length or required checks here: the service reports every problem of the input at once,
    # with what was typed ("39 characters"), as `release create` does.
    version = forms.CharField(required=False, help_text="For example 2.8.5.")
    release_commit = forms.CharField(
        label="Release commit", required=False, help_text="Full 40-character SHA of the release-branch HEAD."
    )
    branch = forms.CharField(required=False, help_text="Default: release/VERSION.")
    git_url = forms.CharField(
        label="Git URL", required=False, help_text="Default: https://github.com/CuBoulder/express.git."
    )
    profile = forms.CharField(required=False, initial="express", help_text="Install profile name.")

    class Meta:
        model = ReleasePlan
        fields: list[str] = []

    def _post_clean(self):
        # No model validation of our own: the service validates, and only when the fields are there.
        if self.errors:
            return
        data = self.cleaned_data
        try:
            self.instance = services.create_plan(
                data["version"].strip(),
                commit=data["release_commit"].strip(),
                user=self.user,
                branch=data["branch"].strip(),
                git_url=data["git_url"].strip(),
                profile=data["profile"].strip() or "express",
            )
        except services.ActionRefused as exc:
            for field, message in exc.errors or [(exc.field, str(exc))]:
                self.add_error(field, message)


@admin.register(ReleasePlan)
class ReleasePlanAdmin(
    ReleaseReportMixin, RollbackMixin, StepPagesMixin, LaunchMixin, ReleaseOperationsMixin, admin.ModelAdmin
):
    list_display = (
        "version",
        "state_display",
        "current_step",
        "environments",
        "created_by_username",
        "created_at",
    )
    list_display_links = ("version",)
    exclude = ("created_by",)
    add_form = ReleasePlanCreationForm
    add_fieldsets = ((None, {"fields": ("version", "release_commit", "branch", "git_url", "profile")}),)

    def get_queryset(self, request):
        waiting = LaunchRequest.objects.filter(step__plan=OuterRef("pk"), state=LaunchRequest.State.PENDING)
        return (
            super()
            .get_queryset(request)
            .prefetch_related("steps__environment")
            .annotate(n_waiting=Subquery(waiting.values("step__plan").annotate(n=Count("pk")).values("n")))
        )

    @admin.display(description="state")
    def state_display(self, plan):
        state = plan.state
        badge = format_html('<span class="rp-state rp-state-{}">{}</span>', state, state)
        waiting = getattr(plan, "n_waiting", None)
        if waiting:
            # Under the two-person rule: an approver sees from the list that someone waits for them.
            badge = format_html(
                '{} <span class="rp-badge rp-waiting" data-waiting="{}">{} waiting for approval</span>',
                badge,
                waiting,
                "a request" if waiting == 1 else f"{waiting} requests",
            )
        return badge

    @admin.display(description="current step")
    def current_step(self, plan):
        current = progress.plan_summary(plan)["current"]
        return f"{current.number}. {current.title} ({current.state})" if current else "—"

    @admin.display(description="progress (steps done)")
    def environments(self, plan):
        rows = progress.plan_summary(plan)["progress"]
        return format_html_join(" · ", "{} {}/{}", rows)

    # -- permissions: records are read-only; creating goes through the service ----------------

    def has_add_permission(self, request):
        return request.user.has_perm(services.PERMISSIONS["create_plan"])

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        # Whoever may operate releases may see the plans they operate on.
        user = request.user
        return super().has_view_permission(request, obj) or any(
            user.has_perm(p) for p in (LAUNCH_STEP, FINALIZE_RELEASE)
        )

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
            form = super().get_form(request, obj, **kwargs)
            return type(form.__name__, (form,), {"user": request.user})
        return super().get_form(request, obj, **kwargs)

    def save_form(self, request, form, change):
        return form.instance  # created (and audited) by services.create_plan in the form

    def save_model(self, request, obj, form, change):
        pass

    def save_related(self, request, form, formsets, change):
        pass

    def response_add(self, request, obj, post_url_continue=None):
        self.message_user(
            request,
            f"Created release {obj.version}: step 1 (the branch) recorded. {guidance.next_sentence(obj)}",
        )
        return self.plan_redirect(obj)
