"""Release operations on the ReleasePlan admin page: the steps table, the two-step launch and the
POST-only controls. Every operation is a call into `releases.services`, which checks permissions,
guards state and writes the audit trail; these views only collect input and report the outcome."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.utils import quote, unquote
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from .. import reports, services
from ..models import SiteResult
from ..states import DONE, LAUNCHABLE, MANUAL_KINDS, SKIPPABLE, SiteState, StepKind, StepState

LAUNCH_PERMISSION = "releases.launch_step"
PROTECTED_PERMISSION = "releases.launch_protected"
FINALIZE_PERMISSION = "releases.finalize_release"


class ReleaseOperationsMixin:
    """Mixed into ReleasePlanAdmin: custom URLs under /admin/releases/releaseplan/<id>/."""

    change_form_template = "admin/releases/releaseplan_change_form.html"
    launch_confirmation_template = "admin/releases/launch_confirmation.html"

    def get_urls(self):
        def wrap(view, post_only=True):
            view = require_POST(view) if post_only else view
            return self.admin_site.admin_view(view)

        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "<path:object_id>/step/<int:number>/launch/",
                wrap(self.launch_view, post_only=False),
                name=f"{name}_launch",
            ),
            path("<path:object_id>/step/<int:number>/retry/", wrap(self.retry_view), name=f"{name}_retry"),
            path("<path:object_id>/step/<int:number>/skip/", wrap(self.skip_view), name=f"{name}_skip"),
            path("<path:object_id>/pause/", wrap(self.pause_view), name=f"{name}_pause"),
            path("<path:object_id>/resume/", wrap(self.resume_view), name=f"{name}_resume"),
            path("<path:object_id>/abort/", wrap(self.abort_view), name=f"{name}_abort"),
            path("<path:object_id>/finalize/", wrap(self.finalize_view), name=f"{name}_finalize"),
            *super().get_urls(),
        ]

    # -- the plan page ---------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        plan = self.get_object(request, unquote(object_id))
        extra_context = dict(extra_context or {})
        if plan is not None:
            extra_context.update(self._steps_context(request, plan))
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    def _steps_context(self, request, plan) -> dict:
        steps = list(plan.steps.select_related("environment").order_by("number"))
        counts: dict[int, dict[str, int]] = {}
        rows = (
            SiteResult.objects.filter(step__plan=plan)
            .values_list("step_id", "state")
            .annotate(n=Count("id"))
            .order_by()
        )
        for step_id, state, n in rows:
            counts.setdefault(step_id, {})[state] = n
        user = request.user
        may_launch = user.has_perm(LAUNCH_PERMISSION)
        may_protected = user.has_perm(PROTECTED_PERMISSION)
        may_finalize = user.has_perm(FINALIZE_PERMISSION)
        # The environment's next step (what `release launch --stage ENV` would start).
        stage_next: dict[int, str] = {}
        for step in steps:
            if (
                step.environment
                and step.state not in DONE
                and step.environment.name not in stage_next.values()
            ):
                stage_next[step.pk] = step.environment.name
        running = False
        table = []
        for step in steps:
            c = counts.get(step.pk, {})
            targeted = sum(c.values())
            done = c.get(SiteState.SUCCEEDED, 0) + c.get(SiteState.SKIPPED, 0)
            failed = c.get(SiteState.FAILED, 0)
            protected = bool(step.environment and step.environment.protected)
            operate = may_launch and (may_protected or not protected)
            manual = step.kind in MANUAL_KINDS
            running = running or step.state == StepState.RUNNING
            table.append(
                {
                    "step": step,
                    "targeted": targeted,
                    "done": done,
                    "failed": failed,
                    "remaining": targeted - done - failed,
                    "done_pct": _pct(done, targeted),
                    "failed_pct": _pct(failed, targeted),
                    "protected": protected,
                    "can_launch": operate and not manual and step.state in LAUNCHABLE,
                    "stage_env": stage_next.get(step.pk) if operate and not manual else None,
                    "can_pause": may_launch and step.state == StepState.RUNNING,
                    "can_resume": operate and step.state == StepState.PAUSED,
                    "can_abort": may_launch and step.state in (StepState.RUNNING, StepState.PAUSED),
                    "can_retry": operate
                    and step.state in (StepState.PAUSED, StepState.FAILED)
                    and failed > 0,
                    "can_skip": operate and not manual and step.state in SKIPPABLE,
                    "can_finalize": may_finalize and step.kind == StepKind.FINALIZE,
                }
            )
        return {"step_rows": table, "any_running": running, "plan_id": quote(plan.pk)}

    # -- launch: confirmation page, then POST ----------------------------------------------

    def launch_view(self, request, object_id, number):
        plan, step, redirect = self._plan_and_step(request, object_id, number)
        if redirect:
            return redirect
        stage = request.POST.get("stage", request.GET.get("stage", "")) in ("1", "true", "on")
        protected = bool(step.environment and step.environment.protected)
        error = ""
        if request.method == "POST":
            typed = request.POST.get("confirm_environment", "").strip()
            if protected and typed != step.environment.name:
                error = (
                    f"{step.environment.name} is protected: type its name exactly to confirm "
                    f"(you typed {typed!r}). Nothing was launched."
                    if typed
                    else f"{step.environment.name} is protected: type its name to confirm. Nothing was launched."
                )
            else:
                try:
                    services.launch(step, request.user, stage=stage)
                except services.ActionRefused as exc:
                    self.message_user(request, f"Launch refused: {exc}", messages.ERROR)
                else:
                    what = "Launched stage from" if stage else "Launched"
                    self.message_user(request, f"{what} step {step.number} ({step.title}).", messages.SUCCESS)
                return self._plan_redirect(plan)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Launch step {step.number} of release {plan.version}?",
            "opts": self.opts,
            "plan": plan,
            "original": plan,
            "step": step,
            "stage": stage,
            "protected": protected,
            "error": error,
            "preview": reports.preview_step(step),
            "plan_url": self._plan_url(plan),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.launch_confirmation_template, context)

    # -- POST-only controls ----------------------------------------------------------------

    def pause_view(self, request, object_id):
        return self._plan_action(request, object_id, "Pause requested for", services.pause)

    def resume_view(self, request, object_id):
        return self._plan_action(request, object_id, "Resumed", services.resume)

    def abort_view(self, request, object_id):
        return self._plan_action(request, object_id, "Abort requested for", services.abort)

    def retry_view(self, request, object_id, number):
        plan, step, redirect = self._plan_and_step(request, object_id, number)
        if redirect:
            return redirect
        return self._run(
            request, plan, lambda: services.retry_failed(step, request.user), "Retrying failed sites of"
        )

    def skip_view(self, request, object_id, number):
        plan, step, redirect = self._plan_and_step(request, object_id, number)
        if redirect:
            return redirect
        reason = request.POST.get("reason", "").strip()
        return self._run(request, plan, lambda: services.skip(step, request.user, reason), "Skipped")

    def finalize_view(self, request, object_id):
        plan = self.get_object(request, unquote(object_id))
        if plan is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        tag = request.POST.get("tag", "").strip()
        commit = request.POST.get("commit", "").strip()
        try:
            services.finalize(plan, tag=tag, commit=commit, user=request.user)
        except services.ActionRefused as exc:
            self.message_user(request, f"Finalize refused: {exc}", messages.ERROR)
        else:
            self.message_user(
                request, f"Release {plan.version} finalized: tag {tag} at {commit}.", messages.SUCCESS
            )
        return self._plan_redirect(plan)

    # -- helpers ---------------------------------------------------------------------------

    def _plan_action(self, request, object_id, verb, operation):
        plan = self.get_object(request, unquote(object_id))
        if plan is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        return self._run(request, plan, lambda: operation(plan, request.user), verb)

    def _run(self, request, plan, operation, verb):
        try:
            step = operation()
        except services.ActionRefused as exc:
            self.message_user(request, f"Refused: {exc}", messages.ERROR)
        else:
            self.message_user(request, f"{verb} step {step.number} ({step.title}).", messages.SUCCESS)
        return self._plan_redirect(plan)

    def _plan_and_step(self, request, object_id, number):
        plan = self.get_object(request, unquote(object_id))
        if plan is None:
            return None, None, self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        try:
            step = services.get_step(plan, number)
        except services.ActionRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return plan, None, self._plan_redirect(plan)
        return plan, step, None

    def _plan_url(self, plan) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_change",
            args=[quote(plan.pk)],
        )

    def _plan_redirect(self, plan):
        return HttpResponseRedirect(self._plan_url(plan))


def _pct(part: int, whole: int) -> float:
    return round(part * 100.0 / whole, 1) if whole else 0.0
