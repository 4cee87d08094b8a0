"""The audit trail, newest first, filtered as in the admin and paginated."""

from __future__ import annotations

from datetime import datetime, time

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers

from releases.models import AuditEvent

from .. import serializers as s
from .base import ApiView
from .plans import Pages

FILTERS = {
    "user": "username",
    "action": "action",
    "outcome": "outcome",
    "release": "plan_version",
    "step": "step_number",
    "environment": "environment_name__iexact",
    "channel": "channel",
    "account": "channel_account",
}


class AuditTrail(ApiView):
    read_permission = "releases.view_auditevent"

    @extend_schema(
        parameters=[
            *(OpenApiParameter(name, str) for name in FILTERS),
            OpenApiParameter("since", str, description="ISO date or date-time (inclusive)."),
            OpenApiParameter("until", str, description="ISO date or date-time (exclusive)."),
        ],
        responses=s.AuditEventOut(many=True),
        summary="The audit trail: who did what, when, through which channel (and token).",
    )
    def get(self, request):
        events = AuditEvent.objects.all()
        for name, lookup in FILTERS.items():
            value = request.query_params.get(name)
            if value not in (None, ""):
                if name == "step" and not value.isdigit():
                    raise serializers.ValidationError({"step": "a step number"})
                events = events.filter(**{lookup: value})
        for name, lookup in (("since", "at__gte"), ("until", "at__lt")):
            value = request.query_params.get(name)
            if value:
                events = events.filter(**{lookup: _moment(name, value)})
        pages = Pages()
        page = pages.paginate_queryset(events.order_by("-at", "-id"), request, view=self)
        return pages.get_paginated_response(s.AuditEventOut(page, many=True).data)


def _moment(name: str, text: str) -> datetime:
    """An ISO date-time, or a date (its midnight in the portal's time zone)."""
    try:
        moment = parse_datetime(text)
        if moment is None and (day := parse_date(text)) is not None:
            moment = datetime.combine(day, time())
    except ValueError:
        moment = None
    if moment is None:
        raise serializers.ValidationError({name: f"{text!r} is not an ISO date or date-time"})
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment
