"""Property-based tests (hypothesis): selector validation and the `release` command's arguments.

Whatever they are given, they answer either with success or with a refusal that has a message
(InvalidSelector, CommandError), never with another exception; and a refused input sends nothing
to Atlas, judged from the simulators' own request logs.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from atlas.client import AtlasClient
from atlas.errors import InvalidSelector
from atlas.selectors import parse_where, validate_where
from atlas.simulator import SimulatorServer
from releases import services
from tests.support import R, configure_environments, make_user, tasks_not_sent

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- selectors ---------------------------------------------------------------------------------------

KEYS = st.one_of(
    st.sampled_from(
        ["status", "update_group", "path", "code.profile", "sid", "$where", "$in", "$nin", "$ne", "$eq",
         "$exists", "$gt", "$lte", "$and", "$or", "$nor", "$regex", "$expr", "$elemMatch", "", "1x", "a b",
         "a..b"]
    ),
    st.text(max_size=6),
)  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 20), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)  # fmt: skip
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=24,
)


def verdict(tree: object) -> str:
    """'' when valid, else the refusal's message; any other exception fails the test."""
    try:
        validate_where(tree)
    except InvalidSelector as exc:
        message = str(exc)
        assert message and "\n" not in message
        return message
    return ""


@pytest.fixture(scope="module")
def recording_atlas():
    server = SimulatorServer("dev", password="selector-pw", sites=20, pool_refill_delay=0)
    server.injector.record = True
    yield server
    server.stop()


@settings(max_examples=100, deadline=None)
@given(TREES)
def test_any_tree_is_a_valid_selector_or_refused_with_a_message_and_json_text_agrees(tree):
    message = verdict(tree)

    again = ""
    try:
        parse_where(json.dumps(tree))
    except InvalidSelector as exc:
        again = str(exc)
    assert again == message


@settings(max_examples=100, deadline=None)
@given(TREES, TREES, st.sampled_from(["$and", "$or", "$nor"]), SCALARS)
def test_where_at_the_top_or_in_any_logical_clause_is_always_refused(tree, other, logical, code):
    assert "$where" in verdict({"$where": code})
    assert "$where" in verdict({logical: [{logical: [{"$where": code}]}]})
    # Beside another clause it is refused whatever that clause is, and named when that one is valid.
    assert verdict({logical: [tree, {"$where": code}]})
    if not verdict(tree):
        assert "$where" in verdict({logical: [tree, {"$where": code}]})
    if not verdict(other):
        assert "$where" in verdict({**other, "$where": code})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TREES)
def test_a_refused_selector_never_reaches_atlas(recording_atlas, tree):
    if not verdict(tree):
        return  # a valid selector is sent, by design
    client = AtlasClient(
        recording_atlas.url, username="release-portal", password="selector-pw", environment="DEV"
    )
    with pytest.raises(InvalidSelector):
        client.list_sites(tree)
    with pytest.raises(InvalidSelector):
        client.list_code(tree)
    assert recording_atlas.injector.requests == []


# -- the release command's arguments ----------------------------------------------------------------

SHA = "c" * 40
WORDS = st.text(max_size=12).filter(lambda s: not s.startswith("-"))  # "-h" would print the help
LONG = st.text(min_size=90, max_size=320).filter(lambda s: not s.startswith("-"))  # past the columns
# The real plan, user and step numbers come up often enough to reach the domain's own refusals.
VERSIONS = st.one_of(
    st.just("2.8.5"), st.sampled_from(["2.8.6", "9.9.9", "", "2.8", "v2.8.5", "2.8.5 "]), WORDS
)
STEPS = st.one_of(
    st.integers(1, 14).map(str),
    st.integers().map(str),
    st.sampled_from(["-1", "0", "15", "", "1.5", "x", "0x3"]),
)
SHAS = st.one_of(st.just(SHA), st.just(R), st.text("0123456789abcdefABCDEF", max_size=44), WORDS)
USERS = st.one_of(st.just("ops-lead"), st.sampled_from(["auditor", "nobody", "", "OPS-LEAD"]), WORDS, LONG)
ACTIONS = ["create", "preview", "launch", "finalize", "pause", "resume", "abort", "retry-failed", "skip",
           "status", "list"]  # fmt: skip


@st.composite
def release_arguments(draw) -> list[str]:
    action = draw(st.sampled_from(ACTIONS))
    argv = [action] if action == "list" else [action, draw(VERSIONS)]
    if action == "create":
        argv += ["--commit", draw(SHAS)]
        for option in ("--branch", "--git-url", "--profile"):
            if draw(st.booleans()):
                argv += [option, draw(st.one_of(WORDS, LONG, st.just("https://example.edu/x.git")))]
    if action == "finalize":
        argv += ["--tag", draw(st.one_of(WORDS, LONG)), "--commit", draw(SHAS)]
    if action in ("preview", "launch", "retry-failed", "skip") and draw(st.booleans()):
        argv += ["--step", draw(STEPS)]
    if action == "launch" and draw(st.booleans()):
        argv += [draw(st.sampled_from(["--next", "--stage"]))] + ([draw(st.sampled_from(["DEV", "prod", "QA"]))]
                                                                  if argv[-1] == "--stage" else [])  # fmt: skip
    if action == "skip":
        argv += ["--reason", draw(WORDS)]
    if action not in ("preview", "status", "list"):
        argv += ["--user", draw(USERS)]
    if action == "launch" and draw(st.booleans()):
        argv.append("--yes")
    if draw(st.booleans()):
        argv.append("--json")
    return argv


@pytest.fixture
def portal(simulator, monkeypatch):
    """Three recording simulators behind the runbook's environments, a plan 2.8.5, an operator
    and a read-only auditor; tasks are not handed to a broker."""
    atlases = {
        name: simulator.of(name, sites=60 if name == "PROD" else None) for name in ("DEV", "TEST", "PROD")
    }
    for atlas in atlases.values():
        atlas.injector.record = True
    configure_environments(atlases)
    operator = make_user("ops-lead")
    make_user("auditor", permissions=())
    services.create_plan("2.8.5", commit=R, user=operator)
    with tasks_not_sent():
        yield atlases


@pytest.mark.django_db
@FAST
@given(argv=release_arguments())
# Text no database column can hold (PostgreSQL refuses NUL characters), wherever it goes.
@example(argv=["status", "2.8.5\x00"])
@example(argv=["preview", "2.8.5", "--step", str(2**70)])  # past any integer column
@example(argv=["create", "2.8.6", "--commit", SHA, "--git-url", "x.git" * 70, "--user", "ops-lead"])
@example(argv=["create", "2.8.6-" + "a" * 40, "--commit", SHA, "--user", "ops-lead"])
@example(argv=["finalize", "2.8.5", "--tag", "t" * 101, "--commit", SHA, "--user", "ops-lead"])
@example(argv=["pause", "2.8.5", "--user", "n" * 151])
@example(argv=["launch", "2.8.5", "--step", "2", "--user", "ops-lead\x00", "--yes"])
@example(argv=["create", "2.8.6\x00", "--commit", SHA, "--user", "ops-lead"])
@example(argv=["skip", "2.8.5", "--step", "2", "--reason", "why\x00", "--user", "ops-lead"])
def test_release_arguments_succeed_or_are_refused_with_a_message_and_a_refusal_sends_nothing(portal, argv):
    def sent() -> int:
        return sum(len(atlas.injector.requests) for atlas in portal.values())

    before = sent()
    try:
        call_command("release", *argv, stdout=io.StringIO(), stderr=io.StringIO(), stdin=io.StringIO())
    except CommandError as exc:
        assert str(exc).strip(), argv
        assert sent() == before, f"a refused command sent requests to Atlas: {argv}: {exc}"
        event(f"{argv[0]}: refused")
    else:
        event(f"{argv[0]}: done" + (", read Atlas" if sent() > before else ""))
