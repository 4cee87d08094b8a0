"""Environments: read them (`environment show --json`) and change them under the rules of
`environment set` (`services.change_environment`: permissions, the two-person protection, audit)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from releases import services
from releases.management.commands.environment import SETTABLE, describe
from releases.models import Environment

from .. import serializers as s
from ..errors import NotFound
from .base import ApiView


class EnvironmentList(ApiView):
    read_permission = "releases.view_environment"

    @extend_schema(
        operation_id="environments_list",
        responses=dict,
        summary="Every environment's settings (`environment show --json`).",
    )
    def get(self, request):
        return Response([describe(env) for env in Environment.objects.order_by("order", "name")])


class EnvironmentDetail(ApiView):
    read_permission = "releases.view_environment"

    def get_environment(self, name: str) -> Environment:
        env = Environment.objects.filter(name__iexact=name).first()
        if env is None:
            raise NotFound(f"no environment {name!r}", "no_environment")
        return env

    @extend_schema(responses=dict, summary="One environment's settings.")
    def get(self, request, name):
        return Response(describe(self.get_environment(name)))

    @extend_schema(
        request=s.EnvironmentChange,
        responses={200: dict, 403: s.Error, 409: s.Error},
        summary="Change settings (`environment set`): audited; weakening a two-person environment is "
        "reserved to superusers.",
    )
    def patch(self, request, name):
        env = self.get_environment(name)
        given = self.valid(s.EnvironmentChange, request.data)
        requested = {SETTABLE[key]: value for key, value in given.items() if key in SETTABLE}
        if "failure_threshold" in given:
            requested["failure_threshold"] = given["failure_threshold"]
        if not requested:
            return Response({"code": "invalid", "detail": "nothing to change: give at least one setting"},
                            status=400)  # fmt: skip
        changes = self.carry_out("environment_set", env, lambda: services.change_environment(
            env, request.user, requested, via="api"))  # fmt: skip
        env.refresh_from_db()
        return Response({"name": env.name, "changes": changes, "environment": describe(env)})
