"""What every API view shares: token authentication, the `api` channel for the audit trail (with
the token's name), object lookups that answer 404 with a code, and the step document."""

from __future__ import annotations

from contextlib import ExitStack

from django.urls import reverse
from rest_framework.views import APIView

from releases import channel as channels
from releases import reports, services
from releases.models import LaunchRequest, ReleasePlan, StepRun
from releases.services import approvals

from ..errors import NotFound, refusal
from ..models import ApiToken
from ..permissions import CanRead, TokenScope, TokenUser


class ApiView(APIView):
    permission_classes = [TokenUser, TokenScope, CanRead]
    read_permission = "releases.view_releaseplan"

    def dispatch(self, request, *args, **kwargs):
        with ExitStack() as self._acting:
            return super().dispatch(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if isinstance(request.auth, ApiToken):
            # Everything the view does from here is recorded as the API's, under the token's name.
            self._acting.enter_context(channels.acting_through(channels.API, request.auth.name))

    def valid(self, serializer_class, data) -> dict:
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    # -- lookups ----------------------------------------------------------------------------------

    def get_plan(self, version: str) -> ReleasePlan:
        plan = ReleasePlan.objects.filter(version=version).first()
        if plan is None:
            raise NotFound(f"no release {version!r}", "no_plan")
        return plan

    def get_step(self, plan: ReleasePlan, number: int):
        try:
            return services.get_step(plan, number)
        except services.ActionRefused as exc:
            raise NotFound(str(exc), "no_step") from None

    def named_step(self, version: str, serializer_class, data) -> tuple[StepRun, dict]:
        """The step a request's body names (`step`) and the body, validated: the plan is looked
        up first (404 before 400), as everywhere."""
        plan = self.get_plan(version)
        data = self.valid(serializer_class, data)
        return self.get_step(plan, data["step"]), data

    def carry_out(self, operation: str, environment, fn, *, action: str | None = None):
        """Call a service; its refusal becomes the API's (403 or 409 with a code)."""
        try:
            return fn()
        except services.ActionRefused as exc:
            raise refusal(exc, self.request.user, operation, environment, action=action) from None

    # -- documents --------------------------------------------------------------------------------

    def step_url(self, step) -> str:
        return self.request.build_absolute_uri(
            reverse("api:step", kwargs={"version": step.plan.version, "number": step.number})
        )

    def step_document(self, step, action: str, **extra) -> dict:
        """`release … --json`'s `{"version", "action", "step"}`, with the URL to poll and the
        step's latest request under the two-person rule."""
        step.refresh_from_db()
        latest = step.launch_requests.order_by("-requested_at", "-pk").first()
        return {
            "version": step.plan.version,
            "action": action,
            "step": reports.step_status(step),
            "url": self.step_url(step),
            "request": request_document(latest),
            **extra,
        }


def request_document(request: LaunchRequest | None) -> dict | None:
    if request is None:
        return None
    return {
        "id": request.pk,
        "action": request.action,
        "stage": request.stage,
        "state": request.state,
        "requested_by": request.requested_by_username,
        "requested_at": request.requested_at.isoformat(),
        "decided_by": request.decided_by_username,
        "description": approvals.describe_request(request),
    }
