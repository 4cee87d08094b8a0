"""Launching from the plan page: the confirmation page with the blast radius of everything the
launch may reach, then the POST; and the second person's approval under the two-person rule.

The counts the operator saw travel signed in the form, bound to the plan, the step, the stage
flag and the user they were shown to, and go to `services.launch(confirmed=…)` as `release launch`
does: a batch that grew since then, or was not shown, pauses the step before its first write.
"""

from __future__ import annotations

from django.contrib import messages
from django.template.response import TemplateResponse
from django.urls import path

from .. import guidance, services
from ..models import AuditEvent
from ..services import approvals, confirmations
from .refusal import refusal_page

SALT = "releases.launch.confirmed"  # not the API's: a token from one is not taken by the other
PATHS_SHOWN = 5  # site paths shown per batch before the rest fold away
STALE = "This confirmation is stale or incomplete: review the targets below again."
CONFIRMATION_ERRORS = {
    "expired": STALE,  # shown again rather than trusted
    "invalid": STALE,
    "other_launch": (
        "This confirmation was shown for another launch (another plan, step, stage or user): review the "
        "targets of this one below."
    ),
}


class LaunchMixin:
    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/step/<int:number>/launch/", view(self.launch_view), name=f"{name}_launch"),
            path(
                "<path:object_id>/step/<int:number>/approve/", view(self.approve_view), name=f"{name}_approve"
            ),
            path(
                "<path:object_id>/step/<int:number>/withdraw/",
                view(self.withdraw_view),
                name=f"{name}_withdraw",
            ),
            *super().get_urls(),
        ]

    def launch_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        stage = request.POST.get("stage", request.GET.get("stage", "")) in ("1", "true", "on")
        params = {"step": step.number, "stage": stage, "via": "admin"}
        try:
            # Refused (and audited) before anything is read from Atlas; Atlas is read only for a
            # page to show (a confirmed POST launches without reading it again).
            prepared = services.prepare_launch(step, request.user, stage=stage, read_atlas=False)
        except services.ActionRefused as exc:
            return refusal_page(
                self, request, title="Launch refused", reason=str(exc), back_url=self.plan_url(plan)
            )
        # A launch that cannot happen now says so first, before anything is typed or confirmed
        # (the same check as services.launch); the page still previews the targets below.
        refusal = prepared.refusal
        error = ""
        if request.method == "POST":
            if refusal:
                try:
                    services.check_launch(step, request.user, parameters=params)  # audited
                except services.ActionRefused as exc:
                    refusal = str(exc)
            else:
                confirmed, error = self._confirmation(request, step, params)
                if not error:
                    return self._launch(request, plan, step, stage, confirmed)
        return self._confirmation_page(request, prepared, refusal=refusal, error=error)

    def _confirmation_page(self, request, prepared, *, refusal: str, error: str):
        """The blast radius (read from Atlas now), the refusal or the form, and the signed counts."""
        step, stage, plan = prepared.step, prepared.stage, prepared.step.plan
        what = f"stage {step.environment} from step {step.number}" if stage else f"step {step.number}"
        title = f"Launch {what} of release {plan.version}?"
        if refusal:
            title = f"{what[0].upper()}{what[1:]} of release {plan.version} cannot be launched now"
        radius = prepared.preview()
        for preview in radius["previews"]:
            for batch in preview.get("batches") or ():
                batch["more"] = max(batch["count"] - PATHS_SHOWN, 0) if batch["paths"] else 0
                batch["unlisted"] = max(batch["count"] - len(batch["paths"]), 0)
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "original": plan,
            "step": step,
            "stage": stage,
            "protected": bool(step.environment and step.environment.protected),
            "two_person": bool(step.environment and step.environment.two_person),
            "error": error,
            "refusal": refusal,
            "next": guidance.next_action(plan) if refusal else None,
            "plan_url": self.plan_url(plan),
            "radius": radius,
            "token": confirmations.sign_launch(step, stage, request.user, radius["confirmed"], salt=SALT),
            "confirm_label": _launch_label(step, stage),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/releases/releaseplan/launch_confirmation.html", context)

    def _confirmation(self, request, step, params) -> tuple[dict | None, str]:
        """The counts the operator confirmed, or why the confirmation is refused (audited)."""
        error = ""
        env = step.environment
        typed = request.POST.get("confirm_environment", "").strip()
        if env is not None and env.protected and typed != env.name:
            error = f"{env.name} is protected: type its name exactly to confirm"
            error += f" (you typed {typed!r}). Nothing was launched." if typed else ". Nothing was launched."
        confirmed = None
        if not error:
            try:
                confirmed = confirmations.confirmed_counts(
                    request.POST.get("confirmed", ""), step, params["stage"], request.user, salt=SALT
                )
            except confirmations.ConfirmationInvalid as exc:
                error = CONFIRMATION_ERRORS[exc.code]
        if error:
            AuditEvent.record(
                "launch",
                user=request.user,
                step=step,
                outcome=AuditEvent.Outcome.REFUSED,
                parameters={**params, "typed": typed},
                message=f"confirmation refused: {error}",
            )
        return confirmed, error

    def _launch(self, request, plan, step, stage, confirmed):
        try:
            outcome = services.launch(step, request.user, stage=stage, confirmed=confirmed)
        except services.ActionRefused as exc:
            self.message_user(request, f"Launch refused: {exc}", messages.ERROR)
            return self.plan_redirect(plan)
        if isinstance(outcome, services.Requested):
            self.message_user(
                request,
                f"Launch of step {step.number} requested: {step.environment} requires two people, "
                "another PROD release manager must approve it.",
                messages.WARNING,
            )
        else:
            what = f"Launched stage {step.environment} from" if stage else "Launched"
            self.message_user(
                request,
                f"{what} step {step.number} ({step.title}). {guidance.next_sentence(plan)}",
                messages.SUCCESS,
            )
        return self.plan_redirect(plan)

    def approve_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        try:
            services.authorize(request.user, "approve", plan=plan, step=step)
        except services.ActionRefused as exc:
            return refusal_page(
                self, request, title="Approval refused", reason=str(exc), back_url=self.plan_url(plan)
            )
        if request.method == "POST":
            try:
                approvals.approve(step, request.user, request_id=_request_id(request))
            except services.ActionRefused as exc:
                self.message_user(request, f"Approval refused: {exc}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Approved: step {step.number} is {step.state}. {guidance.next_sentence(plan)}",
                    messages.SUCCESS,
                )
            return self.plan_redirect(plan)
        launch_request = approvals.pending_request(step)
        what = launch_request.what if launch_request else "launch"
        context = {
            **self.admin_site.each_context(request),
            "title": f"Approve the {what} of step {step.number} of release {plan.version}?",
            "opts": self.opts,
            "original": plan,
            "step": step,
            "launch_request": launch_request,
            "own": launch_request is not None and launch_request.requested_by_id == request.user.pk,
            "plan_url": self.plan_url(plan),
            "confirm_label": f"Yes, approve the {what} of step {step.number}",
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/releases/releaseplan/approve_confirmation.html", context)

    def withdraw_view(self, request, object_id, number):
        plan, step = self.get_plan_and_step(request, object_id, number)
        if request.method == "POST":
            self.run_operation(
                request,
                plan,
                lambda: approvals.withdraw_request(step, request.user, request_id=_request_id(request)),
                "Withdrew the request for",
            )
        return self.plan_redirect(plan)


def _launch_label(step, stage: bool) -> str:
    """The confirmation's Yes button: "Yes, launch step 2 and its stage"."""
    two_person = bool(step.environment and step.environment.two_person)
    verb = "request the launch of" if two_person else "launch"
    return f"Yes, {verb} step {step.number}{' and its stage' if stage else ''}"


def _request_id(request) -> int | None:
    """The launch request an approve or withdraw form names (None when it names none)."""
    try:
        return int(request.POST.get("request", ""))
    except ValueError:
        return None
