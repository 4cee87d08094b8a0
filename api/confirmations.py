"""A launch's confirmation over the API, as the admin's: the counts the preview showed, signed and
bound to the plan, the step, the stage flag and the user they were shown to, for an hour. The
launch then goes to `services.launch(confirmed=…)`: a batch that grew since, or one that was not
shown, pauses the step before its first write."""

from __future__ import annotations

from releases.models import AuditEvent
from releases.services import confirmations

SALT = "api.launch.confirmed"  # not the admin's: a token from one is not taken by the other
MESSAGES = {
    "expired": "the confirmation is older than an hour: preview again",
    "invalid": "the confirmation is not one the portal gave: preview again",
    "other_launch": (
        "the confirmation was given for another launch (another plan, step, stage or user): preview this one"
    ),
}


class ConfirmationRefused(Exception):
    pass


def sign(step, stage: bool, user, counts: dict) -> str:
    return confirmations.sign_launch(step, stage, user, counts, salt=SALT)


def confirmed_counts(token: str, step, stage: bool, user) -> dict[int, dict[str, int]]:
    """The counts `token` confirms for this very launch; ConfirmationRefused otherwise."""
    try:
        return confirmations.confirmed_counts(token, step, stage, user, salt=SALT)
    except confirmations.ConfirmationInvalid as exc:
        raise ConfirmationRefused(MESSAGES[exc.code]) from None


def typed_environment(step, typed: str) -> str:
    """Why the typed environment name does not confirm a launch on `step` ('' when it does)."""
    env = step.environment
    if env is None or not env.protected or (typed or "").strip() == env.name:
        return ""
    return f"{env.name} is protected: give its name in confirm_environment (got {typed!r})"


def refuse(message: str, action: str, user, step, params: dict) -> None:
    AuditEvent.record(action, user=user, step=step, outcome=AuditEvent.Outcome.REFUSED, parameters=params,
                      message=f"confirmation refused: {message}")  # fmt: skip
    raise ConfirmationRefused(message)
