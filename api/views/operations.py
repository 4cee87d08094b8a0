"""The release manager's operations, each a POST through the same `releases` functions as the
admin and `manage.py release`: permissions, the two-person rule, confirmations and the audit are
theirs. Work that runs on a worker answers 202 with the step's URL (`Location`) to poll."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response

from releases import services
from releases.models import AuditEvent, StepRun
from releases.services import approvals, rollback
from releases.states import ACTIVE, DONE, StepState

from .. import confirmations, examples
from .. import serializers as s
from ..errors import Refused, refusal
from .base import ApiView
from .plans import LaunchPreviewMixin

REFUSALS = {403: s.Error, 404: s.Error, 409: s.Error}


def accepted(document: dict) -> Response:
    return Response(document, status=status.HTTP_202_ACCEPTED, headers={"Location": document["url"]})


class Launch(LaunchPreviewMixin, ApiView):
    @extend_schema(
        parameters=[
            OpenApiParameter("step", int),
            OpenApiParameter("stage", str, enum=s.ENVIRONMENT_NAMES),
            OpenApiParameter("next", bool),
        ],
        responses={200: s.LaunchPreview, **REFUSALS},
        examples=[examples.LAUNCH_PREVIEW],
        summary="What this launch would reach, with its confirmation (the admin's confirmation page).",
    )
    def get(self, request, version):
        step, stage, _ = self.target(version, s.LaunchTarget, request.query_params)
        prepared = self.carry_out("launch", step.environment, lambda: services.prepare_launch(
            step, request.user, stage=stage, via="api", read_atlas=True))  # fmt: skip
        return Response(self.launch_preview(step, stage, prepared))

    @extend_schema(
        request=s.Launch,
        responses={202: s.StepDocument, **REFUSALS},
        examples=[examples.LAUNCHED],
        summary="Launch a step, the next step, or an environment's stage (`release launch`).",
    )
    def post(self, request, version):
        step, stage, data = self.target(version, s.Launch, request.data)
        user = request.user
        params = {"step": step.number, "stage": stage, "via": "api"}
        self.carry_out("launch", step.environment, lambda: services.prepare_launch(
            step, user, stage=stage, via="api", read_atlas=False))  # fmt: skip
        confirmed = self.confirmed(step, stage, data, params)
        self.carry_out("launch", step.environment,
                       lambda: services.launch(step, user, stage=stage, confirmed=confirmed))  # fmt: skip
        chain = [x.number for x in step.stage_chain() if x.state not in DONE] if stage else [step.number]
        return accepted(self.step_document(step, "launch", chain=chain))

    def target(self, version: str, serializer_class, data) -> tuple[StepRun, bool, dict]:
        """The step the request names (`step`, `stage` or `next`), whether it launches a stage,
        and the request, validated."""
        plan = self.get_plan(version)
        data = self.valid(serializer_class, data)
        stage = data.get("stage") or None
        if data.get("step") is not None:
            step = self.get_step(plan, data["step"])
        else:
            step = self.carry_out("launch", None, lambda: services.next_step(plan, stage))
        return step, bool(stage), data

    def confirmed(self, step, stage: bool, data: dict, params: dict) -> dict | None:
        """The counts the launch confirms (None with `yes`); refused (audited) unless the typed
        environment and the confirmation are this launch's."""
        user = self.request.user
        try:
            why = confirmations.typed_environment(step, data["confirm_environment"])
            if why:
                confirmations.refuse(
                    why, "launch", user, step, {**params, "typed": data["confirm_environment"]}
                )
            if data["yes"]:
                return None
            try:
                return confirmations.confirmed_counts(data["confirmation"], step, stage, user)
            except confirmations.ConfirmationRefused as exc:
                confirmations.refuse(str(exc), "launch", user, step, params)
        except confirmations.ConfirmationRefused as exc:
            raise Refused(f"{exc}; nothing was launched", "confirmation_refused") from None


class PlanOperation(ApiView):
    """pause, abort, resume: on the plan's active (or paused) step, as `release pause|abort|resume`."""

    operation = ""
    states: tuple = ACTIVE

    def post(self, request, version):
        plan = self.get_plan(version)
        current = plan.steps.select_related("environment").filter(state__in=self.states).order_by("number")
        environment = current.first().environment if current.exists() else None
        function = getattr(services, self.operation)
        step = self.carry_out(self.operation, environment, lambda: function(plan, request.user))
        document = self.step_document(step, self.operation)
        return accepted(document) if self.operation == "resume" else Response(document)


def plan_operation(name: str, states: tuple, summary: str, code: int = 200):
    @extend_schema(request=None, responses={code: s.StepDocument, **REFUSALS}, summary=summary)
    def post(self, request, version):
        return PlanOperation.post(self, request, version)

    return type(name.title(), (PlanOperation,), {"operation": name, "states": states, "post": post})


Pause = plan_operation("pause", (StepState.RUNNING,), "Pause the running step after the sites in flight.")
Abort = plan_operation("abort", ACTIVE, "Abort the running or paused step.")
Resume = plan_operation("resume", (StepState.PAUSED,), "Resume the paused step (a request on a two-person "
                        "environment).", 202)  # fmt: skip


class RetryFailed(ApiView):
    @extend_schema(request=None, responses={202: s.StepDocument, **REFUSALS},
                   summary="Retry a paused or failed step's failed sites.")  # fmt: skip
    def post(self, request, version, number):
        step = self.get_step(self.get_plan(version), number)
        step = self.carry_out(
            "retry_failed", step.environment, lambda: services.retry_failed(step, request.user)
        )
        return accepted(self.step_document(step, "retry-failed"))


class Skip(ApiView):
    @extend_schema(request=s.Skip, responses={200: s.StepDocument, **REFUSALS},
                   summary="Skip a step, with a recorded reason.")  # fmt: skip
    def post(self, request, version, number):
        step = self.get_step(self.get_plan(version), number)
        reason = self.valid(s.Skip, request.data)["reason"]
        step = self.carry_out("skip", step.environment, lambda: services.skip(step, request.user, reason))
        return Response(self.step_document(step, "skip"))


class Finalize(ApiView):
    @extend_schema(request=s.Finalize, responses={200: s.StepDocument, **REFUSALS},
                   summary="Record the finalized release (step 7): tag and commit.")  # fmt: skip
    def post(self, request, version):
        plan = self.get_plan(version)
        data = self.valid(s.Finalize, request.data)
        plan = self.carry_out("finalize", None, lambda: services.finalize(
            plan, tag=data["tag"], commit=data["commit"], user=request.user))  # fmt: skip
        return Response(self.step_document(self.get_step(plan, 7), "finalize"))


class Approve(ApiView):
    @extend_schema(request=s.Approve, responses={202: s.StepDocument, **REFUSALS},
                   summary="Approve the request named (two-person rule); never the requester's own.")  # fmt: skip
    def post(self, request, version):
        step, data = self.named_step(version, s.Approve, request.data)
        try:
            step = approvals.approve(step, request.user, request_id=data["request"])
        except services.ActionRefused as exc:
            named = step.launch_requests.filter(pk=data["request"]).first()
            if named is not None and named.requested_by_id == request.user.pk:
                raise Refused(str(exc), "own_request", status.HTTP_403_FORBIDDEN) from None
            raise refusal(exc, request.user, "approve", step.environment) from None
        return accepted(self.step_document(step, "approve"))


class Withdraw(ApiView):
    @extend_schema(request=s.Withdraw, responses={200: s.StepDocument, **REFUSALS},
                   summary="Withdraw a request waiting for approval (the requester, or an approver).")  # fmt: skip
    def post(self, request, version):
        step, data = self.named_step(version, s.Withdraw, request.data)
        named = approvals.pending_request(step)
        if data.get("request"):
            named = step.launch_requests.filter(pk=data["request"]).first()
        # Someone else's request is withdrawn only by an approver: judged as an approval.
        theirs = named is not None and named.requested_by_id != request.user.pk
        step = self.carry_out("withdraw", step.environment, lambda: approvals.withdraw_request(
            step, request.user, request_id=data.get("request")), action="approve" if theirs else None)  # fmt: skip
        return Response(self.step_document(step, "withdraw"))


class Rollback(ApiView):
    @extend_schema(
        parameters=[
            OpenApiParameter("failed", bool),
            OpenApiParameter("sites", str, description="PATH,PATH"),
        ],
        responses={200: dict, **REFUSALS},
        summary="What a rollback would do: each site and the version it goes back to; what to type.",
    )
    def get(self, request, version, number):
        step = self.get_step(self.get_plan(version), number)
        sites = [p for p in request.query_params.get("sites", "").split(",") if p]
        data = self.valid(
            s.RollbackChoice, {"failed": request.query_params.get("failed", False), "sites": sites}
        )
        prepared = self.carry_out("rollback", step.environment, lambda: rollback.prepare(
            step, request.user, failed=data["failed"], paths=data["sites"]))  # fmt: skip
        return Response({
            "version": version,
            "step": step.number,
            "environment": step.environment.name,
            "protected": step.environment.protected,
            "sites": [{"path": row.path, "site_id": row.site_id, "to": row.previous_profile,
                       "version": prepared.versions.get(row.previous_profile)} for row in prepared.rows],
            "lines": prepared.describe(),
            "database": prepared.database,
            "confirmation": prepared.confirmation,
        })  # fmt: skip

    @extend_schema(request=s.Rollback, responses={202: s.StepDocument, **REFUSALS},
                   summary="Roll back sites of an update step (`release rollback`).")  # fmt: skip
    def post(self, request, version, number):
        step = self.get_step(self.get_plan(version), number)
        data = self.valid(s.Rollback, request.data)
        # Permission and eligibility first: a person who may not roll back is told so, not asked to
        # type PROD's name (as `Launch.post`, the admin and the shell do).
        self.carry_out("rollback", step.environment, lambda: rollback.prepare(
            step, request.user, failed=data["failed"], paths=data["sites"]))  # fmt: skip
        why = confirmations.typed_environment(step, data["confirm_environment"])
        if why:
            AuditEvent.record("rollback", user=request.user, step=step, outcome=AuditEvent.Outcome.REFUSED,
                              parameters={"step": step.number}, message=f"confirmation refused: {why}")  # fmt: skip
            raise Refused(f"{why}; nothing was rolled back", "confirmation_refused")
        step = self.carry_out("rollback", step.environment, lambda: rollback.roll_back(
            step, request.user, confirm=data["confirm"], failed=data["failed"], paths=data["sites"]))  # fmt: skip
        return accepted(self.step_document(step, "rollback"))
