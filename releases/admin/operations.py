"""The plan page's steps and the POST-only controls. Every operation is a call into
`releases.services`, which checks permissions, guards state and writes
the audit trail; these views only collect input and report the outcome. A refused form comes back
with its error next to it and its input kept (the error travels in the session, POST-redirect-GET).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.utils import quote, unquote
from django.http import HttpResponseRedirect

from .. import guidance, launchability, progress, services
from ..roles import FINALIZE_RELEASE, LAUNCH_PROTECTED, LAUNCH_STEP
from ..states import ACTIVE, CANARY_WAITING, DONE, LAUNCHABLE, MANUAL_KINDS, SKIPPABLE, StepKind, StepState
from .pages import PlanPages
from .refusal import refusal_page

FORM_ERROR = "releases_form_error"  # session key: {"form", "step", "message", "values"}


class ReleaseOperationsMixin(PlanPages):
    """Mixed into ReleasePlanAdmin: custom URLs under /admin/releases/releaseplan/<id>/."""

    change_form_template = "admin/releases/releaseplan/change_form.html"

    def get_urls(self):
        return [
            self.plan_path("live/", self.plan_live_view, "live"),
            self.plan_path("step/<int:number>/retry/", self.retry_view, "retry", post_only=True),
            self.plan_path("step/<int:number>/skip/", self.skip_view, "skip", post_only=True),
            self.plan_path("pause/", self.pause_view, "pause", post_only=True),
            self.plan_path("resume/", self.resume_view, "resume", post_only=True),
            self.plan_path("abort/", self.abort_view, "abort"),
            self.plan_path("finalize/", self.finalize_view, "finalize", post_only=True),
            *super().get_urls(),
        ]

    # -- the plan page and its live fragment ------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        plan = self.get_object(request, unquote(object_id))
        extra_context = dict(extra_context or {})
        if plan is not None:
            extra_context.update(self.steps_context(request, plan))
            extra_context["form_error"] = request.session.pop(FORM_ERROR, None)
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    def plan_live_view(self, request, object_id):
        plan = self.get_viewable_plan(request, object_id)
        context = self.steps_context(request, plan)
        return self.render(
            request, "admin/releases/releaseplan/plan_live.html", context, plan=plan, fragment=True
        )

    def steps_context(self, request, plan) -> dict:
        overview = progress.plan_overview(plan)
        steps = [e["step"] for e in overview["steps"]]
        facts = launchability.PlanFacts.load(plan, steps)
        stage_first: dict[str, int] = {}
        for step in steps:
            if step.environment and step.state not in DONE:
                stage_first.setdefault(step.environment.name, step.pk)
        user = request.user
        rows = {}
        for entry in overview["steps"]:
            entry.update(self._operations(user, entry, facts, stage_first))
            rows[entry["step"].pk] = entry
        action = guidance.next_action(plan, facts)
        return {
            **overview,
            "plan_id": quote(plan.pk),
            "next": action,
            "next_url": self._next_url(plan, action, rows.get(action.step.pk) if action.step else None),
        }

    def _next_url(self, plan, action, row) -> str:
        """Where the next action's link goes: the launch confirmation or the approval when this user
        is offered it, else the step's row (its controls, or the reason it waits)."""
        if row is None:
            return ""
        number = action.step.number
        if action.kind == "launch_stage" and row["can_stage"]:
            return self.plan_reverse("launch", quote(plan.pk), number) + "?stage=1"
        if action.kind == "approve" and row["can_approve"]:
            return self.plan_reverse("approve", quote(plan.pk), number)
        return f"#step-{number}"

    def _operations(self, user, entry, facts, stage_first) -> dict:
        """Which operations this user is offered on this step now: a launch only where
        `launchability.launch_check` (the services' own check) finds nothing in the way; the other
        steps say in a line why they wait."""
        step, counts = entry["step"], entry["counts"]
        request = facts.waiting.get(step.pk)
        protected = bool(step.environment and step.environment.protected)
        operate = user.has_perm(LAUNCH_STEP) and (user.has_perm(LAUNCH_PROTECTED) or not protected)
        site_step = step.kind not in MANUAL_KINDS
        refusal = launchability.launch_check(step, facts) if site_step and step.state in LAUNCHABLE else None
        launchable = operate and site_step and step.state in LAUNCHABLE and refusal is None
        canary = step.state == StepState.PAUSED and (step.result or {}).get("canary") == CANARY_WAITING
        finalizing = step.kind == StepKind.FINALIZE
        gate = launchability.finalize_check(step, facts) if finalizing else None
        may_finalize = finalizing and gate is None and user.has_perm(FINALIZE_RELEASE)
        return {
            "protected": protected,
            "canary": canary,
            "request": request,
            "can_launch": launchable,
            "can_stage": launchable and stage_first.get(getattr(step.environment, "name", None)) == step.pk,
            "waits": (refusal.short if refusal else "")
            or (gate.short if gate and step.state not in DONE else ""),
            "can_approve": request is not None
            and user.has_perm(LAUNCH_PROTECTED)
            and request.requested_by_id != user.pk,
            "can_withdraw": request is not None
            and (request.requested_by_id == user.pk or user.has_perm(LAUNCH_PROTECTED)),
            # Pause is the emergency brake: any release manager, any environment.
            "can_pause": user.has_perm(LAUNCH_STEP) and step.state == StepState.RUNNING,
            "can_resume": operate and step.state == StepState.PAUSED and request is None,
            "can_abort": operate and step.state in ACTIVE,
            "can_retry": operate
            and step.state in (StepState.PAUSED, StepState.FAILED)
            and counts["failed"] > 0
            and request is None,
            "can_skip": operate and site_step and step.state in SKIPPABLE,
            # Finalizing is offered until it is recorded; afterwards only as a correction, folded
            # away, until a later step has used the final commit.
            "can_finalize": may_finalize and step.state not in DONE,
            "can_correct_finalize": may_finalize and step.state in DONE,
        }

    # -- abort: confirmation page, then POST ------------------------------------------------

    def abort_view(self, request, object_id):
        plan = self.get_plan(request, object_id)
        if request.method == "POST":
            return self.run_operation(
                request, plan, lambda: services.abort(plan, request.user), "Abort requested for"
            )
        step = plan.steps.select_related("environment").filter(state__in=ACTIVE).first()
        refusal = services.permission_refusal(request.user, "abort", step.environment if step else None)
        if refusal:
            reason = f"{refusal}: it cannot abort."
            return refusal_page(
                self, request, title="Abort refused", reason=reason, back_url=self.plan_url(plan)
            )
        context = {
            "title": f"Abort release {plan.version}?",
            "step": step,
            "counts": progress.step_progress(step)["counts"] if step else None,
            "plan_url": self.plan_url(plan),
            "confirm_label": f"Yes, abort step {step.number}" if step else "",
        }
        return self.render(request, "admin/releases/releaseplan/abort_confirmation.html", context, plan=plan)

    # -- POST-only controls ----------------------------------------------------------------

    def pause_view(self, request, object_id):
        return self._plan_action(request, object_id, "Pause requested for", services.pause)

    def resume_view(self, request, object_id):
        return self._plan_action(request, object_id, "Resumed", services.resume, requestable=True)

    def retry_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        return self.run_operation(
            request,
            plan,
            lambda: services.retry_failed(step, request.user),
            "Retrying failed sites of",
            requestable=True,
        )

    def skip_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        reason = request.POST.get("reason", "").strip()
        try:
            services.skip(step, request.user, reason)
        except services.ActionRefused as exc:
            return self._form_refused(request, plan, "skip", number, exc, {"reason": reason})
        self.message_user(
            request,
            f"Skipped step {step.number} ({step.title}). {guidance.next_sentence(plan)}",
            messages.SUCCESS,
        )
        return self.plan_redirect(plan)

    def finalize_view(self, request, object_id):
        plan = self.get_plan(request, object_id)
        tag = request.POST.get("tag", "").strip()
        commit = request.POST.get("commit", "").strip()
        try:
            services.finalize(plan, tag=tag, commit=commit, user=request.user)
        except services.ActionRefused as exc:
            return self._form_refused(request, plan, "finalize", 7, exc, {"tag": tag, "commit": commit})
        self.message_user(
            request,
            f"Release {plan.version} finalized: tag {tag} at {commit}; steps 8–14 deploy this commit. "
            f"{guidance.next_sentence(plan)}",
            messages.SUCCESS,
        )
        return self.plan_redirect(plan)

    # -- helpers ---------------------------------------------------------------------------

    def _form_refused(self, request, plan, form, number, exc, values):
        request.session[FORM_ERROR] = {"form": form, "step": number, "message": str(exc), "values": values}
        return HttpResponseRedirect(f"{self.plan_url(plan)}#step-{number}")

    def _plan_action(self, request, object_id, verb, operation, *, requestable: bool = False):
        plan = self.get_plan(request, object_id)
        return self.run_operation(
            request, plan, lambda: operation(plan, request.user), verb, requestable=requestable
        )
