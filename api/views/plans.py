"""Reading plans: the list, creating one, its status (`release status --json`), previews, and
the step document clients poll after an operation."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from releases import reports, services
from releases.models import ReleasePlan
from releases.states import DONE

from .. import confirmations, examples
from .. import serializers as s
from .base import ApiView


class Pages(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class PlanList(ApiView):
    @extend_schema(
        responses=s.PlanRow(many=True), summary="Every release plan, newest first (`release list`)."
    )
    def get(self, request):
        pages = Pages()
        plans = pages.paginate_queryset(ReleasePlan.objects.prefetch_related("steps").order_by("-created_at"),
                                        request, view=self)  # fmt: skip
        return pages.get_paginated_response([self.row(plan) for plan in plans])

    @extend_schema(
        request=s.PlanCreate,
        responses={201: s.StatusDocument, 403: s.Error, 409: s.Error},
        summary="Create a release plan (`release create`); step 1 is recorded done.",
    )
    def post(self, request):
        data = self.valid(s.PlanCreate, request.data)
        plan = self.carry_out("create_plan", None, lambda: services.create_plan(
            data["version"], commit=data["release_commit"], user=request.user, branch=data["branch"],
            git_url=data["git_url"], profile=data["profile"] or "express",
        ), action="create_plan")  # fmt: skip
        headers = {"Location": self.plan_url(plan)}
        return Response(reports.status(plan), status=status.HTTP_201_CREATED, headers=headers)

    def row(self, plan: ReleasePlan) -> dict:
        return {
            "version": plan.version,
            "state": plan.state,
            "created_by": plan.created_by_username,
            "created_at": plan.created_at.isoformat(),
            "final_tag": plan.final_tag or None,
            "url": self.plan_url(plan),
        }

    def plan_url(self, plan) -> str:
        return self.request.build_absolute_uri(reverse("api:plan", kwargs={"version": plan.version}))


class PlanDetail(ApiView):
    @extend_schema(
        responses={200: s.StatusDocument, 404: s.Error},
        examples=[examples.STATUS],
        summary="The plan's status: the `release status --json` document.",
    )
    def get(self, request, version):
        return Response(reports.status(self.get_plan(version)))


class PlanPreview(ApiView):
    @extend_schema(
        parameters=[OpenApiParameter("step", int, description="Only this step (1–14).")],
        responses=inline_serializer(
            "Previews", {"previews": serializers.ListField(child=serializers.DictField())}
        ),
        summary="What every step (or one) would do, read from Atlas now (`release preview --json`).",
    )
    def get(self, request, version):
        plan = self.get_plan(version)
        number = request.query_params.get("step")
        if number is not None:
            number = self.get_step(plan, self.number(number)).number
        return Response({"previews": reports.preview(plan, number)})

    @staticmethod
    def number(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise serializers.ValidationError({"step": "a step number (1–14)"}) from None


class StepDetail(ApiView):
    @extend_schema(
        responses={200: s.StepDocument, 404: s.Error},
        examples=[examples.STEP],
        summary="One step: its state and counts, and its latest request under the two-person rule. Poll it.",
    )
    def get(self, request, version, number):
        return Response(self.step_document(self.get_step(self.get_plan(version), number), "status"))


class LaunchPreviewMixin:
    def launch_preview(self, step, stage: bool, prepared=None) -> dict:
        """What a launch of `step` (`stage`: and its stage) would reach, read from Atlas now, with
        the confirmation the launch takes (bound to these counts, this launch and this user; none
        for a user who may not launch it). `prepared`: the launch's `services.prepare_launch`."""
        user = self.request.user
        radius = prepared.preview() if prepared is not None else reports.blast_radius(step, stage=stage)
        env = step.environment
        may = not services.permission_refusal(user, "launch", env)
        chain = [x.number for x in step.stage_chain() if x.state not in DONE] if stage else [step.number]
        return {
            "version": step.plan.version,
            "step": step.number,
            "stage": stage,
            "environment": env.name if env else None,
            "protected": bool(env and env.protected),
            "two_person": bool(env and env.two_person),
            "chain": chain,
            "previews": radius["previews"],
            "deletions": radius["deletions"],
            "updates": radius["updates"],
            "total": radius["total"],
            "refusal": prepared.refusal if prepared is not None else services.action_refusal(step, "launch"),
            "confirmation": confirmations.sign(step, stage, user, radius["confirmed"]) if may else None,
        }


def _flag(text: str | None) -> bool:
    return (text or "").lower() in ("1", "true", "yes", "on")


class StepPreview(LaunchPreviewMixin, ApiView):
    @extend_schema(
        parameters=[OpenApiParameter("stage", bool, description="The stage from this step.")],
        responses={200: s.LaunchPreview, 404: s.Error},
        examples=[examples.LAUNCH_PREVIEW],
        summary="A step's preview, with the confirmation a launch of it takes.",
    )
    def get(self, request, version, number):
        step = self.get_step(self.get_plan(version), number)
        return Response(self.launch_preview(step, _flag(request.query_params.get("stage"))))
