"""Roll back, from the step page: the failed sites are listed with a checkbox each; the selection
goes to a confirmation page (what each site goes back to, the database warning, PROD's typed
name), whose POST calls `releases.services.rollback` like `release rollback` does."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponseRedirect

from .. import services
from ..services import approvals, rollback
from ..states import RollbackState, SiteState, StepKind
from .pages import PlanPages

LISTED = 500  # failed sites listed with a checkbox; `release rollback --failed` takes them all


def rollback_candidates(step, user) -> list:
    """The failed sites the step page offers to roll back ([] when the user may not, or none can)."""
    if step.kind != StepKind.UPDATE_SITES or services.permission_refusal(user, "rollback", step.environment):
        return []
    if rollback.step_refusal(step):
        return []
    rows = step.sites.filter(state=SiteState.FAILED, patched_at__isnull=False).exclude(
        rollback=RollbackState.DONE
    )
    return [row for row in rows.order_by("id")[:LISTED] if not rollback.eligibility(row, step)]


class RollbackMixin(PlanPages):
    def get_urls(self):
        return [
            self.plan_path("step/<int:number>/rollback/", self.rollback_view, "rollback"),
            *super().get_urls(),
        ]

    def rollback_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        back = self.plan_reverse("step", plan.pk, step.number)
        if request.method != "POST":
            return HttpResponseRedirect(back)
        ids = [int(value) for value in request.POST.getlist("site") if value.isdigit()]
        try:
            prepared = rollback.prepare(step, request.user, ids=ids) if ids else None
        except services.ActionRefused as exc:
            self.message_user(request, f"Refused: {exc}", messages.ERROR)
            return HttpResponseRedirect(back)
        if prepared is None:
            self.message_user(request, "Select the sites to roll back.", messages.ERROR)
            return HttpResponseRedirect(back)
        if "confirmed" not in request.POST:
            return self._rollback_confirmation(request, plan, prepared, back)
        return self._roll_back(request, step, prepared, ids, back)

    def _roll_back(self, request, step, prepared, ids, back):
        environment = step.environment
        typed = request.POST.get("confirm_environment", "").strip()
        try:
            if environment.protected and typed != environment.name:
                raise services.ActionRefused(f"type {environment.name} to confirm (typed: {typed!r})")
            rollback.roll_back(step, request.user, ids=ids, confirm=request.POST.get("confirm_version", ""))
        except services.ActionRefused as exc:
            return self._rollback_confirmation(request, step.plan, prepared, back, error=str(exc))
        waiting = approvals.pending_request(step)
        if waiting is not None:
            self.message_user(request, f"Rollback of {len(ids)} sites requested (#{waiting.pk}): {environment} "
                              "requires two people, another release manager with its permission must approve it.",
                              messages.WARNING)  # fmt: skip
        else:
            self.message_user(request, f"Rolling back {len(ids)} sites of step {step.number}: each goes back on "
                              "its earlier item and is verified there.", messages.SUCCESS)  # fmt: skip
        return HttpResponseRedirect(back)

    def _rollback_confirmation(self, request, plan, prepared, back, error: str = ""):
        count = len(prepared.rows)
        context = {
            "title": f"Roll back {len(prepared.rows)} sites of step {prepared.step.number}?",
            "prepared": prepared,
            "step": prepared.step,
            "back_url": back,
            "plan_url": self.plan_url(plan),
            "error": error,
            "confirm_label": f"Yes, roll back {count} site{'' if count == 1 else 's'}",
        }
        return self.render(
            request, "admin/releases/releaseplan/rollback_confirmation.html", context, plan=plan
        )
