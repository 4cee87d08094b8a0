"""Client-side validation of `where` selectors before they reach Atlas.

Atlas (Eve) runs any Mongo operator but `$where`; a typo in a selector can update or delete the
wrong sites, so the portal accepts only the operators a release needs, and says exactly what is
wrong with anything else.
"""

from __future__ import annotations

import json
import re

from .errors import InvalidSelector

FIELD_OPERATORS = frozenset({"$in", "$nin", "$ne", "$eq", "$exists", "$gt", "$gte", "$lt", "$lte"})
LOGICAL_OPERATORS = frozenset({"$and", "$or", "$nor"})
_LIST_OPERATORS = frozenset({"$in", "$nin"})
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def parse_where(value: str | dict) -> dict:
    """Parse and validate a selector given as JSON text or as a dict; return the dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidSelector(
                f"the selector is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    validate_where(value)
    return value


def validate_where(where: object, path: str = "where") -> None:
    if not isinstance(where, dict):
        raise InvalidSelector(f"{path} must be a JSON object, not {_kind(where)}")
    for key, value in where.items():
        if not isinstance(key, str):
            raise InvalidSelector(f"{path} has a non-text key {key!r}")
        if key == "$where":
            raise InvalidSelector(f"{path}: the $where operator is not allowed (Atlas bans it)")
        if key in LOGICAL_OPERATORS:
            _validate_logical(key, value, f"{path}.{key}")
        elif key.startswith("$"):
            raise InvalidSelector(f"{path}: unknown operator {key!r} at the top of a selector")
        elif not _FIELD_NAME.match(key):
            raise InvalidSelector(f"{path}: {key!r} is not a valid field name")
        else:
            _validate_condition(key, value, f"{path}.{key}")


def _validate_logical(op: str, value: object, path: str) -> None:
    if not isinstance(value, list) or not value:
        raise InvalidSelector(f"{path} must be a non-empty list of selectors")
    for index, clause in enumerate(value):
        validate_where(clause, f"{path}[{index}]")


def _validate_condition(field: str, value: object, path: str) -> None:
    if field == "update_group":
        _validate_update_group(value, path)
    if not isinstance(value, dict) or not any(str(k).startswith("$") for k in value):
        return  # a plain equality (a dict without operators is an exact sub-document match)
    for op, operand in value.items():
        if op == "$where":
            raise InvalidSelector(f"{path}: the $where operator is not allowed (Atlas bans it)")
        if op not in FIELD_OPERATORS:
            allowed = ", ".join(sorted(FIELD_OPERATORS))
            raise InvalidSelector(f"{path}: unknown operator {op!r} (allowed: {allowed})")
        if op in _LIST_OPERATORS and not isinstance(operand, list):
            raise InvalidSelector(f"{path}.{op} must be a list, not {_kind(operand)}")
        if op == "$exists" and not isinstance(operand, bool):
            raise InvalidSelector(f"{path}.$exists must be true or false")


def _validate_update_group(value: object, path: str) -> None:
    if isinstance(value, dict):
        for op, operand in value.items():
            if op == "$exists":
                continue
            for item in operand if isinstance(operand, list) else [operand]:
                _check_group_number(item, f"{path}.{op}")
    else:
        _check_group_number(value, path)


def _check_group_number(value: object, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSelector(f"{path}: an update group must be an integer >= 0, not {value!r}")


def exclude_profile(where: dict, profile_id: str) -> dict:
    """AND a selector with `code.profile != profile_id`, so reruns skip sites already updated."""
    term = {"code.profile": {"$ne": profile_id}}
    if "code.profile" not in where:
        return {**where, **term}
    return {"$and": [where, term]}


def _kind(value: object) -> str:
    return {
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)
