"""What every operation shares: who may do what (permissions, the protected environment, the two-person
rule's actions), the refusal (audited), and handing a step's task to the broker."""

from __future__ import annotations

import logging
import uuid

from celery import current_app
from django.contrib.auth import get_user_model

from .. import roles
from ..models import (
    AuditEvent,
    StepRun,
)

logger = logging.getLogger(__name__)

RUN_STEP_TASK = "releases.tasks.run_step"

PERMISSIONS = {
    "create_plan": "releases.add_releaseplan",
    "launch": roles.LAUNCH_STEP,
    "pause": roles.LAUNCH_STEP,
    "resume": roles.LAUNCH_STEP,
    "abort": roles.LAUNCH_STEP,
    "retry_failed": roles.LAUNCH_STEP,
    "rollback": roles.LAUNCH_STEP,
    "skip": roles.LAUNCH_STEP,
    "finalize": roles.FINALIZE_RELEASE,
    "environment_set": "releases.change_environment",
    # The second person of the two-person rule holds the protected permission.
    "approve": roles.LAUNCH_PROTECTED,
}


class ActionRefused(Exception):
    """The action was not carried out; the message says why (and an audit event records it).
    `code` names the refusal for a caller that decides on it (the HTTP API's error code), `field`
    the input it is about when there is one (a form shows it there): never the message's words.
    `errors`: every problem of a form's input at once, as (field, message) pairs."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str = "refused",
        errors: list[tuple[str | None, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.errors = errors or []  # every problem of a form's input at once: (field, message)


def resolve_user(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None or not user.is_active or not user.is_staff:
        AuditEvent.record(
            "resolve_user",
            username=username or "?",
            outcome=AuditEvent.Outcome.REFUSED,
            message="unknown, inactive or non-staff user",
        )
        raise ActionRefused(f"unknown user {username!r} (it must be an active staff account)")
    return user


# Pause is an emergency brake: any release manager may pull it on any environment (audited).
# Everything else that acts on a protected environment's step needs its permission too.
PROTECTED_ACTIONS = ("launch", "abort", "resume", "retry_failed", "rollback", "skip", "environment_set")
# On a two-person environment these are only requests until another person approves them: each
# sends writes to Atlas again. Pause and abort never need two people.
TWO_PERSON_ACTIONS = ("launch", "resume", "retry_failed", "rollback")


# What a refusal says the user may not do ("viewer may not launch steps: ask a release manager").
ACTION_WORDS = {
    "create_plan": "create release plans",
    "launch": "launch steps",
    "pause": "pause steps",
    "resume": "resume steps",
    "abort": "abort steps",
    "retry_failed": "retry failed sites",
    "rollback": "roll back sites",
    "skip": "skip steps",
    "finalize": "finalize releases",
    "environment_set": "change environment settings",
    "approve": "approve requests under the two-person rule",
}


def permission_refusal(user, action: str, environment=None) -> str:
    """Why `user` may not do `action` (on `environment`): '' when they may. Audits nothing:
    the admin asks it to decide which controls to offer, `authorize` to refuse."""
    missing = [] if user.has_perm(PERMISSIONS[action]) else [PERMISSIONS[action]]
    # Acting on a protected environment (or changing its protection) needs the protected
    # permission too, or anyone with change_environment could unprotect PROD and then launch there.
    if action in PROTECTED_ACTIONS and environment is not None and environment.protected:
        if not user.has_perm("releases.launch_protected"):
            missing.append("releases.launch_protected")
    if not missing:
        return ""
    where = (
        f" on the protected environment {environment.name}"
        if environment is not None and ("releases.launch_protected" in missing and action != "approve")
        else ""
    )
    return f"{user.get_username()} may not {ACTION_WORDS[action]}{where}: {roles.ask(*missing)}"


def authorize(user, action: str, *, plan=None, step=None, environment=None, parameters=None) -> None:
    """Raise ActionRefused (and audit it) unless `user` may do `action` (there)."""
    environment = environment or (step.environment if step else None)
    refusal = permission_refusal(user, action, environment)
    if refusal:
        refuse(
            refusal,
            action,
            code="permission_denied",
            user=user,
            plan=plan,
            step=step,
            environment=environment,
            parameters=parameters,
        )


def refuse(message: str, action: str, *, code: str = "", **where) -> None:
    """Audit the refusal of `action` and raise it, coded (`launch_refused` unless told)."""
    AuditEvent.record(action, outcome=AuditEvent.Outcome.REFUSED, message=message, **where)
    raise ActionRefused(message, code=code or f"{action}_refused")


class BrokerUnavailable(Exception):
    """The task could not be handed to the broker."""


def enqueue_step(step: StepRun, *, strict: bool = True) -> None:
    """Hand the step's task to the broker inside the caller's transaction: if the broker refuses
    it, the transaction (the launch, its audit event) rolls back. A worker that receives the task
    before the commit waits for it (`engine.execute`). With `strict=False` (a stage moving on
    from a worker) a broker failure is logged: the lease watchdog enqueues the step again."""
    task_id = str(uuid.uuid4())
    step.task_ids = [*step.task_ids, task_id][-50:]
    StepRun.objects.filter(pk=step.pk).update(task_ids=step.task_ids)
    try:
        current_app.send_task(
            RUN_STEP_TASK,
            args=(step.pk,),
            task_id=task_id,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:  # kombu raises OperationalError and friends, by transport
        if strict:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
        logger.warning("step %s: could not enqueue (%s); the watchdog will", step.pk, type(exc).__name__)


def plain(value):
    return value if isinstance(value, str | int | float | bool | dict | list | type(None)) else str(value)
