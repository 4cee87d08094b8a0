"""What each operation takes (validated here, judged by `releases.services`) and the shapes of
the documents it answers with, for the OpenAPI schema."""

from __future__ import annotations

import copy
from functools import partial

from portal_cli.args import SETTINGS
from rest_framework import serializers

from releases.models import AuditEvent
from releases.runbook import ENVIRONMENTS

ENVIRONMENT_NAMES = [name for name, _, _ in ENVIRONMENTS]


class PlanCreate(serializers.Serializer):
    version = serializers.CharField(max_length=40)
    release_commit = serializers.CharField(max_length=40, help_text="Full 40-character SHA.")
    branch = serializers.CharField(required=False, allow_blank=True, default="")
    git_url = serializers.CharField(required=False, allow_blank=True, default="")
    profile = serializers.CharField(required=False, default="express")


class LaunchTarget(serializers.Serializer):
    """Exactly one of `step`, `stage`, `next`: as `release launch --step|--stage|--next`."""

    step = serializers.IntegerField(required=False, min_value=1)
    stage = serializers.ChoiceField(choices=ENVIRONMENT_NAMES, required=False)
    next = serializers.BooleanField(required=False, default=False)

    def validate(self, data):
        given = [name for name in ("step", "stage") if data.get(name) is not None] + (
            ["next"] if data.get("next") else []
        )
        if len(given) != 1:
            raise serializers.ValidationError("give exactly one of step, stage, next")
        return data


class Launch(LaunchTarget):
    confirmation = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="From the launch preview (GET)."
    )
    confirm_environment = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="A protected environment's name, typed."
    )
    yes = serializers.BooleanField(
        required=False, default=False, help_text="Launch without a confirmation (`release launch --yes`)."
    )

    def validate(self, data):
        data = super().validate(data)
        if not data["yes"] and not data["confirmation"]:
            raise serializers.ValidationError(
                {"confirmation": "required (GET the launch preview) unless yes is true"}
            )
        return data


class Approve(serializers.Serializer):
    step = serializers.IntegerField(min_value=1)
    request = serializers.IntegerField(help_text="The request approved (as the step's `request` shows it).")


class Withdraw(serializers.Serializer):
    step = serializers.IntegerField(min_value=1)
    request = serializers.IntegerField(required=False)


class Skip(serializers.Serializer):
    reason = serializers.CharField(help_text="Why the step is skipped (recorded in the audit).")


class Finalize(serializers.Serializer):
    tag = serializers.CharField(allow_blank=True)
    commit = serializers.CharField(help_text="Full 40-character SHA of the merge commit.")


class RollbackChoice(serializers.Serializer):
    failed = serializers.BooleanField(required=False, default=False, help_text="Every failed site.")
    sites = serializers.ListField(child=serializers.CharField(), required=False, default=list)

    def validate(self, data):
        if bool(data["failed"]) == bool(data["sites"]):
            raise serializers.ValidationError("give failed or sites (one of them)")
        return data


class Rollback(RollbackChoice):
    confirm = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="The release's version, typed, when asked."
    )
    confirm_environment = serializers.CharField(required=False, allow_blank=True, default="")


# The field each kind of `environment set` option takes (portal_cli.args.SETTINGS: the API takes
# the options with underscores), and what the few fields take besides `required=False`.
SETTING_FIELDS = {
    int: serializers.IntegerField,
    float: serializers.FloatField,
    str: serializers.CharField,
    bool: serializers.BooleanField,
    "on|off": serializers.BooleanField,
}
SETTING_OPTIONS = {
    "failure-threshold": {"help_text": "N, P% or none."},
    "slack-webhook-env": {"allow_blank": True},
}


class EnvironmentChange(serializers.Serializer):
    """The settings of `environment set`, by their option names (`batch_pause` for --batch-pause)."""

    def get_fields(self):
        # From the `portal` command's table of the options, in its order: the one list of them.
        return {
            option.replace("-", "_"): SETTING_FIELDS[kind](required=False, **SETTING_OPTIONS.get(option, {}))
            for option, kind in SETTINGS.items()
        }


class AuditEventOut(serializers.ModelSerializer):
    """One audit row, with the audit CSV's column names."""

    release = serializers.CharField(source="plan_version")
    step = serializers.IntegerField(source="step_number", allow_null=True)
    environment = serializers.CharField(source="environment_name")
    account = serializers.CharField(source="channel_account")

    class Meta:
        model = AuditEvent
        fields = ["id", "at", "username", "action", "outcome", "release", "step", "environment", "reason",
                  "message", "parameters", "channel", "account"]  # fmt: skip


# The shape of a document an operation answers with (the view builds the document itself): its
# fields are `layout`'s groups of {name: field}, in the document's order. No docstring: a class's
# docstring is its schema component's description, and the documents' own would inherit this one.
class Document(serializers.Serializer):
    layout: tuple[dict[str, serializers.Field], ...] = ()

    def get_fields(self):
        return {name: copy.deepcopy(field) for group in self.layout for name, field in group.items()}


def _named(field: type[serializers.Field], names: str, **options) -> dict[str, serializers.Field]:
    """One `field(**options)` for each of the space-separated `names`, in their order."""
    return {name: field(**options) for name in names.split()}


# The fields of a document by kind: text("version state") is {"version": CharField(), "state": ...}.
text = partial(_named, serializers.CharField)
number = partial(_named, serializers.IntegerField)
flag = partial(_named, serializers.BooleanField)
moment = partial(_named, serializers.DateTimeField)
mapping = partial(_named, serializers.DictField)


class Counts(Document):
    layout = (
        number("targeted succeeded failed skipped pending"),
        number("unverified", help_text="PATCHed, not yet verified."),
        number("rolled_back"),
    )


class StepOut(Document):
    layout = (
        number("number"),
        text("environment", allow_null=True),
        text("kind title state message"),
        text("launched_by", allow_null=True),
        moment("started_at finished_at", allow_null=True),
        {"counts": Counts()},
        {"task_ids": serializers.ListField(child=serializers.CharField())},
        text("activity liveness", allow_null=True),
        {"to_check": serializers.ListField(child=serializers.DictField())},
    )


class RequestOut(Document):
    layout = (
        number("id"),
        text("action"),
        flag("stage"),
        text("state requested_by"),
        moment("requested_at"),
        text("decided_by description"),
    )


class StepDocument(Document):
    """What an operation on one step answers (`release … --json`), with the step's URL to poll."""

    layout = (
        text("version action"),
        {"step": StepOut()},
        text("url"),
        {"request": RequestOut(allow_null=True)},
        {"chain": serializers.ListField(child=serializers.IntegerField(), required=False)},
    )


class StatusDocument(Document):
    """`release status --json`."""

    layout = (
        text("version state profile release_branch release_commit"),
        text("final_tag final_commit", allow_null=True),
        text("created_by"),
        {"steps": StepOut(many=True)},
        mapping("sweeps durations"),
    )


class PlanRow(Document):
    layout = (
        text("version state created_by"),
        moment("created_at"),
        text("final_tag", allow_null=True),
        text("url"),
    )


class LaunchPreview(Document):
    layout = (
        text("version"),
        number("step"),
        flag("stage"),
        text("environment", allow_null=True),
        flag("protected two_person"),
        {"chain": serializers.ListField(child=serializers.IntegerField())},
        {"previews": serializers.ListField(child=serializers.DictField())},
        number("deletions updates total"),
        text("refusal"),
        text("confirmation", allow_null=True),
    )


class Error(Document):
    layout = (text("code detail"),)
