"""A launch's confirmation over the API, as the admin's: the counts the preview showed, signed and
bound to the plan, the step, the stage flag and the user they were shown to, for an hour. The
launch then goes to `services.launch(confirmed=…)`: a batch that grew since, or one that was not
shown, pauses the step before its first write."""

from __future__ import annotations

from django.core import signing

from releases.models import AuditEvent

SALT = "api.launch.confirmed"
MAX_AGE = 3600


class ConfirmationRefused(Exception):
    pass


def sign(step, stage: bool, user, counts: dict) -> str:
    return signing.dumps(_bound(step, stage, user, {str(n): c for n, c in counts.items()}), salt=SALT)


def confirmed_counts(token: str, step, stage: bool, user) -> dict[int, dict[str, int]]:
    """The counts `token` confirms for this very launch; ConfirmationRefused otherwise."""
    try:
        raw = signing.loads(token, salt=SALT, max_age=MAX_AGE)
        counts = raw.pop("counts")
        expected = _bound(step, stage, user, counts)
        expected.pop("counts")
        confirmed = {int(n): dict(batches) for n, batches in counts.items()}
    except signing.SignatureExpired:
        raise ConfirmationRefused("the confirmation is older than an hour: preview again") from None
    except (signing.BadSignature, ValueError, AttributeError, KeyError, TypeError):
        raise ConfirmationRefused("the confirmation is not one the portal gave: preview again") from None
    if raw != expected:
        raise ConfirmationRefused(
            "the confirmation was given for another launch (another plan, step, stage or user): preview "
            "this one"
        )
    return confirmed


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


def _bound(step, stage: bool, user, counts: dict) -> dict:
    return {
        "plan": step.plan_id,
        "step": step.number,
        "stage": bool(stage),
        "user": user.pk,
        "counts": counts,
    }
