"""Client-side validation of `where` selectors: pure functions, no Atlas needed."""

from __future__ import annotations

import pytest

from atlas.errors import InvalidSelector
from atlas.selectors import exclude_profile, parse_where, validate_where

PROFILE = "5c65f2a8e4b0c1a2b3c4d5e6"


@pytest.mark.parametrize(
    "where",
    [
        {"status": "available", "code.profile": {"$ne": PROFILE}},
        {"status": "launched", "update_group": {"$ne": 13}},
        {"status": "installed", "update_group": 0},
        {"path": {"$in": ["homepage", "webcentral"]}},
        {"code.profile": {"$ne": PROFILE}, "status": {"$in": ["installed", "launched", "locked"]}},
        {"$and": [{"status": "launched"}, {"update_group": {"$in": [7, 8, 9, 10, 11, 12]}}]},
        {"update_group": {"$exists": False}},
    ],
)
def test_runbook_selectors_are_accepted(where: dict) -> None:
    assert parse_where(where) == where


def test_parse_where_returns_the_object_from_json_text() -> None:
    assert parse_where('{"status": {"$in": ["launched"]}}') == {"status": {"$in": ["launched"]}}


def test_where_operator_is_refused_at_the_top() -> None:
    with pytest.raises(InvalidSelector, match=r"\$where operator is not allowed"):
        validate_where({"$where": "this.status == 'launched'"})


def test_where_operator_is_refused_inside_logical_clauses() -> None:
    with pytest.raises(InvalidSelector, match=r"where\.\$or\[1\]: the \$where operator"):
        validate_where({"$or": [{"status": "launched"}, {"$where": "1"}]})


def test_where_operator_is_refused_inside_a_field_condition() -> None:
    with pytest.raises(InvalidSelector, match=r"\$where operator is not allowed"):
        validate_where({"status": {"$where": "1"}})


def test_unknown_field_operator_is_named() -> None:
    with pytest.raises(InvalidSelector, match=r"where\.path: unknown operator '\$regexx'"):
        validate_where({"path": {"$regexx": "^training"}})


def test_unknown_top_level_operator_is_named() -> None:
    with pytest.raises(InvalidSelector, match=r"unknown operator '\$text'"):
        validate_where({"$text": {"$search": "homepage"}})


def test_malformed_json_names_the_position() -> None:
    with pytest.raises(InvalidSelector, match=r"not valid JSON: .* at line 2 column 10"):
        parse_where('{"status": "launched",\n "path": }')


@pytest.mark.parametrize(
    ("where", "kind"),
    [('["launched"]', "a list"), ('"launched"', "a string"), ("13", "a number"), ("null", "null")],
)
def test_where_that_is_not_an_object_is_refused(where: str, kind: str) -> None:
    with pytest.raises(InvalidSelector, match=f"where must be a JSON object, not {kind}"):
        parse_where(where)


@pytest.mark.parametrize(
    "where",
    [
        {"update_group": -1},
        {"update_group": "2"},
        {"update_group": 1.5},
        {"update_group": True},
        {"update_group": {"$ne": -13}},
        {"update_group": {"$in": [0, "1"]}},
    ],
)
def test_update_group_must_be_a_non_negative_integer(where: dict) -> None:
    with pytest.raises(InvalidSelector, match="an update group must be an integer >= 0"):
        validate_where(where)


def test_in_operator_needs_a_list() -> None:
    with pytest.raises(InvalidSelector, match=r"where\.status\.\$in must be a list, not a string"):
        validate_where({"status": {"$in": "launched"}})


def test_logical_operator_needs_a_non_empty_list() -> None:
    with pytest.raises(InvalidSelector, match=r"where\.\$and must be a non-empty list"):
        validate_where({"$and": []})


def test_invalid_field_name_is_refused() -> None:
    with pytest.raises(InvalidSelector, match="'code..profile' is not a valid field name"):
        validate_where({"code..profile": PROFILE})


def test_exclude_profile_merges_into_a_selector_without_a_profile_term() -> None:
    where = {"status": "launched", "update_group": 3}

    assert exclude_profile(where, PROFILE) == {
        "status": "launched",
        "update_group": 3,
        "code.profile": {"$ne": PROFILE},
    }
    assert where == {"status": "launched", "update_group": 3}  # the caller's selector is untouched


def test_exclude_profile_uses_and_when_the_selector_has_a_profile_term() -> None:
    where = {"status": "available", "code.profile": "5c65f2a8e4b0c1a2b3c4d5e7"}

    assert exclude_profile(where, PROFILE) == {"$and": [where, {"code.profile": {"$ne": PROFILE}}]}
