"""Which answers prove an update step's credentials, so that its writes may stop going one at a
time (releases/engine/credentials.py); the engine tests show the same from Atlas's side."""

import pytest

from releases.engine.credentials import CredentialsCheck
from releases.engine.recorder import SiteOutcome
from releases.states import SiteState


def outcome(state: str, status: int | None, attempts: int) -> SiteOutcome:
    return SiteOutcome(state, status, None, "", attempts)


@pytest.mark.parametrize(
    "answer",
    [
        outcome(SiteState.SUCCEEDED, 200, 1),
        outcome(SiteState.SUCCEEDED, 200, 3),  # after 412s: re-read, re-sent, stored
        outcome(SiteState.SKIPPED, 404, 1),  # Eve authenticates before it looks the item up
        outcome(SiteState.FAILED, 422, 1),
    ],
)
def test_an_answer_atlas_gave_past_authentication_opens_the_window(answer):
    check = CredentialsCheck(None, probe=False)
    assert check.writes_allowed(24) == 1

    check.answered(answer)

    assert check.proven and check.writes_allowed(24) == 24


@pytest.mark.parametrize(
    "answer",
    [
        outcome(SiteState.SUCCEEDED, 200, 0),  # a re-read found it done: GETs are public
        outcome(SiteState.SKIPPED, 404, 0),  # a re-read found it gone
        outcome(SiteState.FAILED, None, 1),  # no answer
        outcome(SiteState.FAILED, 502, 1),  # the proxy in front answered, not Atlas
        outcome(SiteState.FAILED, 500, 1),
    ],
)
def test_an_answer_that_proves_nothing_keeps_the_next_write_alone(answer):
    check = CredentialsCheck(None, probe=False)

    check.answered(answer)

    assert not check.proven and check.writes_allowed(24) == 1
