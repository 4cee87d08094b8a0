"""The step page: progress, per-batch breakdown, elapsed time and ETA, what the step is doing
now, failures grouped by error, the site rows (paginated, filtered by batch and state) and the
sweep. Its live part is a fragment the page includes and `live.js` refreshes (one template, two
uses). Queries are bounded whatever the number of site rows (see `releases.progress`)."""

from __future__ import annotations

from django.core.paginator import Paginator

from .. import launchability, progress, reports
from ..states import ACTIVE, CANARY_WAITING, DONE, MANUAL_KINDS, SiteState, StepKind, StepState
from .pages import PlanPages
from .rollback import rollback_candidates

SITES_PER_PAGE = 100


class StepPagesMixin(PlanPages):
    def get_urls(self):
        return [
            self.plan_path("step/<int:number>/", self.step_view, "step"),
            self.plan_path("step/<int:number>/live/", self.step_live_view, "step_live"),
            *super().get_urls(),
        ]

    def step_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        context = {
            **self._step_context(plan, step),
            "title": f"Release {plan.version}, step {step.number}: {step.title}",
            "sites": self._site_rows(request, step),
            "failures": progress.failure_groups(step),
            "to_check": reports.sites_to_check(step),
            "sweep": progress.sweep_groups(step),
            "site_states": SiteState.choices,
            "rollback_sites": rollback_candidates(step, request.user),
            "hint": _hint(plan, step),
        }
        return self.render(request, "admin/releases/releaseplan/step.html", context, plan=plan)

    def step_live_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        context = {
            **self._step_context(plan, step),
            "failures": progress.failure_groups(step),
            "to_check": reports.sites_to_check(step),
            "sites": self._site_rows(request, step),  # the page's filter and page, from its query
            "fragment": True,
        }
        return self.render(
            request, "admin/releases/releaseplan/step_live.html", context, plan=plan, fragment=True
        )

    def _step_context(self, plan, step) -> dict:
        return {
            "plan_id": plan.pk,
            "step": step,
            "plan_url": self.plan_url(plan),
            "progress": progress.step_progress(step),
            "canary": step.state == StepState.PAUSED and (step.result or {}).get("canary") == CANARY_WAITING,
        }

    def _site_rows(self, request, step) -> dict:
        rows = step.sites.order_by("batch_index", "id").only(
            "id", "step_id", "path", "sid", "site_id", "batch_index", "batch_name", "state", "status", "update_group",
            "attempts", "http_status", "message", "finished_at", "reported_version", "reported_error",
            "reported_at", "page_status", "verified_at", "rollback", "rollback_message",
        )  # fmt: skip
        batch, state = request.GET.get("batch", ""), request.GET.get("state", "")
        message = request.GET.get("message")
        if batch.isdigit():
            rows = rows.filter(batch_index=int(batch))
        if state in SiteState.values:
            rows = rows.filter(state=state)
        if message is not None:
            rows = rows.filter(message=message)
        page = Paginator(rows, SITES_PER_PAGE).get_page(request.GET.get("page"))
        query = request.GET.copy()
        query.pop("page", None)
        return {"page": page, "batch": batch, "state": state, "message": message, "query": query.urlencode()}


def _hint(plan, step) -> dict:
    """What can be done with this step now, or why nothing can: the line under the step's title
    (a link to the step's row on the plan page when its controls are there)."""
    if step.kind == StepKind.FINALIZE:
        if step.state in DONE:
            return {"text": f"Finalized: tag {plan.final_tag} at {plan.final_commit}", "link": False}
        gate = launchability.finalize_check(step, launchability.PlanFacts.load(plan))
        if gate is not None:
            return {"text": gate.short, "link": False}
        return {"text": "Finalize it on the plan page (the tag and the commit)", "link": True}
    if step.state in ACTIVE:
        return {"text": "Pause, resume or abort it on the plan page", "link": True}
    if step.kind in MANUAL_KINDS or step.state in DONE:
        return {"text": "", "link": False}
    refusal = launchability.launch_check(step)
    if refusal is not None:
        return {"text": refusal.short or refusal.message, "link": False}
    return {"text": "Launch it (or its stage) from the plan page", "link": True}
