"""What every page and control under a plan's URL (`/admin/releases/releaseplan/<id>/…`) shares:
its URL patterns, the lookups that raise `Http404` / `PermissionDenied` (as healthchecks'
`_get_check_for_user`), the one way an admin page is rendered, the plan page's URL, and running
an operation with its outcome said in a message. The page mixins (`operations`, `steps`,
`rollback`, `report`) build on `PlanPages`; `ReleasePlanAdmin` is the ModelAdmin they make."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from .. import guidance, services
from ..services import approvals


class PlanPages:
    # -- URLs ------------------------------------------------------------------------------------

    def plan_path(self, route: str, view, suffix: str, *, post_only: bool = False):
        """The URL pattern `<id>/<route>` of a plan, through `admin_view`, named
        `releases_releaseplan_<suffix>`."""
        view = require_POST(view) if post_only else view
        name = f"{self.opts.app_label}_{self.opts.model_name}_{suffix}"
        return path(f"<path:object_id>/{route}", self.admin_site.admin_view(view), name=name)

    def plan_reverse(self, suffix: str, *args) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{suffix}", args=args
        )

    def plan_url(self, plan) -> str:
        return self.plan_reverse("change", quote(plan.pk))

    def plan_redirect(self, plan):
        return HttpResponseRedirect(self.plan_url(plan))

    # -- lookups ---------------------------------------------------------------------------------

    def get_plan(self, request, object_id):
        """The plan, or `Http404`. Who may operate on it is the operation's own check."""
        plan = self.get_object(request, unquote(object_id))
        if plan is None:
            raise Http404(f"no release plan with id {object_id!r}")
        return plan

    def get_viewable_plan(self, request, object_id):
        """The plan, or `Http404`; `PermissionDenied` when this user may not see it."""
        plan = self.get_plan(request, object_id)
        if not self.has_view_permission(request, plan):
            raise PermissionDenied
        return plan

    def get_plan_and_step(self, request, object_id, number: int):
        """The plan and its step `number`, or `Http404`; `PermissionDenied` as `get_viewable_plan`."""
        plan = self.get_viewable_plan(request, object_id)
        try:
            return plan, services.get_step(plan, number)
        except services.ActionRefused as exc:
            raise Http404(str(exc)) from None

    # -- rendering -------------------------------------------------------------------------------

    def render(
        self, request, template: str, context: dict, *, plan=None, fragment: bool = False, status=None
    ):
        """An admin page: the site's context (header, sidebar), `opts`, the plan as `original`.
        A `fragment` (the part of a page `live.js` refreshes) goes without the site's context."""
        page = {} if fragment else self.admin_site.each_context(request)
        page["opts"] = self.opts
        if plan is not None:
            page["original"] = plan
        request.current_app = self.admin_site.name
        return TemplateResponse(request, template, {**page, **context}, status=status)

    # -- operations ------------------------------------------------------------------------------

    def run_operation(self, request, plan, operation, verb: str, *, requestable: bool = False):
        """Call `operation()` (a service returning the step it acted on), say the outcome (or the
        refusal, or that the two-person rule holds it for approval) and go back to the plan page."""
        try:
            step = operation()
        except services.ActionRefused as exc:
            self.message_user(request, f"Refused: {exc}", messages.ERROR)
            return self.plan_redirect(plan)
        waiting = approvals.pending_request(step) if requestable else None
        if waiting is not None and waiting.requested_by_id == request.user.pk:
            self.message_user(
                request,
                f"The {waiting.what} of step {step.number} is requested (#{waiting.pk}): {step.environment} "
                "requires two people, another PROD release manager must approve it.",
                messages.WARNING,
            )
        else:
            self.message_user(
                request,
                f"{verb} step {step.number} ({step.title}). {guidance.next_sentence(plan)}",
                messages.SUCCESS,
            )
        return self.plan_redirect(plan)
