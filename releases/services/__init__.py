"""Operations on release plans, shared by the admin, `manage.py release` and the HTTP API.

Each operation checks the acting user's permission, changes state through the model's guarded
transitions, enqueues work only after the transaction commits, and leaves an audit event — for
refusals too. One module per concern; this package exports what callers use.
"""

from . import approvals, confirmations, rollback, update_groups
from .approvals import (
    approve,
    describe_request,
    pending_request,
    withdraw_request,
)
from .controls import (
    abort,
    pause,
    resume,
    resume_step,
    retry_failed,
    skip,
)
from .core import (
    PERMISSIONS,
    PROTECTED_ACTIONS,
    RUN_STEP_TASK,
    TWO_PERSON_ACTIONS,
    ActionRefused,
    BrokerUnavailable,
    authorize,
    enqueue_step,
    permission_refusal,
    plain,
    refuse,
    resolve_user,
)
from .dispatch import (
    complete_step,
    continue_stage,
)
from .environments import (
    PROTECTED_SETTINGS,
    change_environment,
    check_environment_change,
    environment_change_refusal,
    parse_threshold,
    validation_messages,
    weakenings,
)
from .launching import (
    Launched,
    PreparedLaunch,
    Requested,
    action_refusal,
    check_launch,
    launch,
    prepare_launch,
    request_action,
    request_launch,
)
from .plans import (
    create_plan,
    finalize,
    get_step,
    next_step,
)
from .update_groups import (
    check_update_group_change,
    copied_fields,
    delete_update_groups,
    update_group_refusal,
)

__all__ = [
    "Launched",
    "PreparedLaunch",
    "Requested",
    "prepare_launch",
    "ActionRefused",
    "BrokerUnavailable",
    "PERMISSIONS",
    "PROTECTED_ACTIONS",
    "PROTECTED_SETTINGS",
    "RUN_STEP_TASK",
    "TWO_PERSON_ACTIONS",
    "abort",
    "action_refusal",
    "approvals",
    "approve",
    "authorize",
    "change_environment",
    "check_environment_change",
    "check_launch",
    "check_update_group_change",
    "confirmations",
    "complete_step",
    "continue_stage",
    "copied_fields",
    "create_plan",
    "delete_update_groups",
    "describe_request",
    "enqueue_step",
    "environment_change_refusal",
    "finalize",
    "get_step",
    "launch",
    "next_step",
    "parse_threshold",
    "pause",
    "pending_request",
    "permission_refusal",
    "plain",
    "refuse",
    "request_action",
    "request_launch",
    "resolve_user",
    "resume",
    "resume_step",
    "retry_failed",
    "rollback",
    "skip",
    "update_group_refusal",
    "update_groups",
    "validation_messages",
    "weakenings",
    "withdraw_request",
]
