"""What each operation takes (validated here, judged by `releases.services`) and the shapes of
the documents it answers with, for the OpenAPI schema."""

from __future__ import annotations

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


class Counts(serializers.Serializer):
    targeted = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()
    pending = serializers.IntegerField()
    unverified = serializers.IntegerField(help_text="PATCHed, not yet verified.")
    rolled_back = serializers.IntegerField()


class StepOut(serializers.Serializer):
    number = serializers.IntegerField()
    environment = serializers.CharField(allow_null=True)
    kind = serializers.CharField()
    title = serializers.CharField()
    state = serializers.CharField()
    message = serializers.CharField()
    launched_by = serializers.CharField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    counts = Counts()
    task_ids = serializers.ListField(child=serializers.CharField())
    activity = serializers.CharField(allow_null=True)
    liveness = serializers.CharField(allow_null=True)
    to_check = serializers.ListField(child=serializers.DictField())


class RequestOut(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.CharField()
    stage = serializers.BooleanField()
    state = serializers.CharField()
    requested_by = serializers.CharField()
    requested_at = serializers.DateTimeField()
    decided_by = serializers.CharField()
    description = serializers.CharField()


class StepDocument(serializers.Serializer):
    """What an operation on one step answers (`release … --json`), with the step's URL to poll."""

    version = serializers.CharField()
    action = serializers.CharField()
    step = StepOut()
    url = serializers.CharField()
    request = RequestOut(allow_null=True)
    chain = serializers.ListField(child=serializers.IntegerField(), required=False)


class StatusDocument(serializers.Serializer):
    """`release status --json`."""

    version = serializers.CharField()
    state = serializers.CharField()
    profile = serializers.CharField()
    release_branch = serializers.CharField()
    release_commit = serializers.CharField()
    final_tag = serializers.CharField(allow_null=True)
    final_commit = serializers.CharField(allow_null=True)
    created_by = serializers.CharField()
    steps = StepOut(many=True)
    sweeps = serializers.DictField()
    durations = serializers.DictField()


class PlanRow(serializers.Serializer):
    version = serializers.CharField()
    state = serializers.CharField()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    final_tag = serializers.CharField(allow_null=True)
    url = serializers.CharField()


class LaunchPreview(serializers.Serializer):
    version = serializers.CharField()
    step = serializers.IntegerField()
    stage = serializers.BooleanField()
    environment = serializers.CharField(allow_null=True)
    protected = serializers.BooleanField()
    two_person = serializers.BooleanField()
    chain = serializers.ListField(child=serializers.IntegerField())
    previews = serializers.ListField(child=serializers.DictField())
    deletions = serializers.IntegerField()
    updates = serializers.IntegerField()
    total = serializers.IntegerField()
    refusal = serializers.CharField()
    confirmation = serializers.CharField(allow_null=True)


class Error(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()
