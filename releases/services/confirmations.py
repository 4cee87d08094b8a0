"""A launch's signed confirmation: the counts a preview showed, bound to the plan, the step, the
stage flag and the user they were shown to, for an hour. The admin's confirmation page and the
API's preview both sign and check with these two functions, each under its own salt (a token one
gives is not taken by the other); the counts then go to `services.launch(confirmed=…)`, where a
batch that grew since, or one that was not shown, pauses the step before its first write."""

from __future__ import annotations

from django.core import signing

MAX_AGE = 3600  # a confirmation older than an hour is shown again rather than trusted


class ConfirmationInvalid(Exception):
    """Why a token does not confirm this launch, by `code`: 'expired' (older than MAX_AGE),
    'invalid' (not a token the portal gave under this salt) or 'other_launch' (given for another
    plan, step, stage or user). Each caller words it for its own readers."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def sign_launch(step, stage: bool, user, counts: dict, *, salt: str) -> str:
    """The token that confirms `counts` (batch sizes per step number) for this launch only."""
    return signing.dumps(_bound(step, stage, user, {str(n): c for n, c in counts.items()}), salt=salt)


def confirmed_counts(token: str, step, stage: bool, user, *, salt: str) -> dict[int, dict[str, int]]:
    """The counts `token` confirms for this very launch; ConfirmationInvalid otherwise."""
    try:
        raw = signing.loads(token, salt=salt, max_age=MAX_AGE)
        counts = raw.pop("counts")
        expected = _bound(step, stage, user, counts)
        expected.pop("counts")
        confirmed = {int(n): dict(batches) for n, batches in counts.items()}
    except signing.SignatureExpired:
        raise ConfirmationInvalid("expired") from None
    except (signing.BadSignature, ValueError, AttributeError, KeyError, TypeError):
        raise ConfirmationInvalid("invalid") from None
    if raw != expected:
        raise ConfirmationInvalid("other_launch")
    return confirmed


def _bound(step, stage: bool, user, counts: dict) -> dict:
    """What a token carries: the counts and the one launch they were shown for."""
    return {
        "plan": step.plan_id,
        "step": step.number,
        "stage": bool(stage),
        "user": user.pk,
        "counts": counts,
    }
