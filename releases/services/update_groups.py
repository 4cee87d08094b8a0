"""Changing update groups: every add, edit and reorder goes through here.

Each change is checked against the acting user's permissions, made under a lock on the groups of
the (environment, step) it touches (so two concurrent reorders cannot leave two groups on one
position), audited with before/after values, and written to the row's admin history with those
values (e.g. "Position 2 → 1"); who may change them, and deleting them (audited with a copy of each).
"""

from __future__ import annotations

import json

from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.db import transaction

from .. import roles
from ..models import AuditEvent, UpdateGroup
from .core import plain, refuse

LABELS = {"position": "Position", "enabled": "Enabled", "where": "Selector", "step_number": "Step"}


def _label(field: str) -> str:
    return LABELS.get(field, field.replace("_", " ").capitalize())


def describe_changes(changes: dict) -> str:
    """{field: [before, after]} as the history line, e.g. 'Position 2 → 1; Enabled True → False'."""
    return "; ".join(f"{_label(f)} {_shown(old)} → {_shown(new)}" for f, (old, new) in changes.items())


def _shown(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "—" if value in (None, "") else str(value)


def _history(user, group: UpdateGroup, flag: int, message: str) -> None:
    LogEntry.objects.log_actions(
        user_id=user.pk, queryset=[group], action_flag=flag, change_message=message[:4000], single_object=True
    )


def _scope(environment_id: int, step_number: int):
    """The groups of one (environment, step), locked until the transaction ends, in order."""
    return list(
        UpdateGroup.objects.select_for_update()
        .filter(environment_id=environment_id, step_number=step_number)
        .order_by("position", "id")
    )


def _value(group: UpdateGroup, field: str):
    value = getattr(group, field)
    if field == "environment":
        return str(value) if value is not None else None
    return plain(value)


def save_update_group(user, group: UpdateGroup, fields: list[str], *, via: str) -> dict:
    """Save `group` (new, or with `fields` changed in memory); return {field: [before, after]}.

    A new group, or one moved to another environment or step, goes last there, so positions stay
    unique. The permission check covers the environment before and after the change.
    """
    adding = group.pk is None
    fields = [f for f in fields if f not in ("edited", "updated_by", "updated_at")]
    stored = None if adding else UpdateGroup.objects.select_related("environment").get(pk=group.pk)
    environments = [group.environment] + ([] if adding else [stored.environment])
    # Checked before the transaction, so the audited refusal is not rolled back with it.
    check_update_group_change(
        user,
        environments,
        "add" if adding else "change",
        parameters={"object": str(stored or ""), "fields": fields},
    )
    with transaction.atomic():
        if not adding:
            stored = UpdateGroup.objects.select_for_update().select_related("environment").get(pk=group.pk)
        moved = adding or (stored.environment_id, stored.step_number) != (
            group.environment_id,
            group.step_number,
        )
        if moved:
            others = [g for g in _scope(group.environment_id, group.step_number) if g.pk != group.pk]
            if not adding:
                _scope(stored.environment_id, stored.step_number)  # lock the old scope too
            group.position = max((g.position for g in others), default=-1) + 1
            if "position" not in fields:
                fields.append("position")
        before = {f: (None if adding else _value(stored, f)) for f in fields}
        group.edited = True
        group.updated_by = user.get_username()
        group.save()
        changes = {
            f: [before[f], _value(group, f)] for f in fields if adding or before[f] != _value(group, f)
        }
        AuditEvent.record(
            f"updategroup_{'add' if adding else 'change'}",
            user=user,
            environment=group.environment,
            parameters={"object": str(group), "changes": changes, "via": via},
        )
        _history(
            user, group, ADDITION if adding else CHANGE, describe_changes(changes) or "No fields changed"
        )
        if moved and not adding:
            _compact(user, stored.environment_id, stored.step_number, via)
    return changes


def reorder_update_groups(
    user, environment, step_number: int, requested: dict[int, int], *, via: str
) -> dict:
    """Move groups of one (environment, step) to the `requested` positions {group id: position}.

    Under a lock on every group of that environment and step: the requested groups take their
    positions, the others keep their relative order around them, and all are renumbered 0…n-1,
    so positions stay unique whatever two concurrent reorders ask. Returns {group id: [old, new]}
    for the groups whose position changed (each audited, and written to its history).
    """
    check_update_group_change(  # before the transaction: the audited refusal must stay
        user,
        [environment],
        "change",
        parameters={"reorder": {str(k): v for k, v in requested.items()}, "step": step_number},
    )
    with transaction.atomic():
        groups = _scope(environment.pk, step_number)
        unknown = sorted(set(requested) - {g.pk for g in groups})
        if unknown:
            raise ValueError(f"update groups {unknown} are not in {environment} step {step_number}")
        # The requested ones first among equals: a group dropped on position 1 goes before the
        # group that was there.
        ordered = sorted(
            groups,
            key=lambda g: (requested.get(g.pk, g.position), 0 if g.pk in requested else 1, g.position, g.pk),
        )
        return _renumber(user, environment, step_number, groups, ordered, via, requested)


def _renumber(user, environment, step_number, groups, ordered, via, requested=None) -> dict:
    before = {g.pk: g.position for g in groups}
    moved = {}
    for position, group in enumerate(ordered):
        if before[group.pk] != position:
            moved[group.pk] = [before[group.pk], position]
            group.position = position
            group.edited = True
            group.updated_by = user.get_username()
            group.save(update_fields=["position", "edited", "updated_by", "updated_at"])
            _history(user, group, CHANGE, f"Position {before[group.pk]} → {position} (via {via})")
    if moved:
        AuditEvent.record(
            "updategroup_reorder",
            user=user,
            environment=environment,
            parameters={
                "step": step_number,
                "requested": {str(k): v for k, v in (requested or {}).items()},
                "changes": {str(next(g for g in groups if g.pk == pk)): v for pk, v in moved.items()},
                "via": via,
            },
        )
    return moved


def _compact(user, environment_id: int, step_number: int, via: str) -> dict:
    """Renumber one (environment, step) 0…n-1 in its current order (after a group left it)."""
    groups = _scope(environment_id, step_number)
    if not groups or [g.position for g in groups] == list(range(len(groups))):
        return {}
    environment = groups[0].environment
    return _renumber(user, environment, step_number, groups, groups, via)


# -- update groups ---------------------------------------------------------------------------------


def update_group_refusal(user, environments, action: str) -> str:
    """Why `user` may not `action` (add, change, delete) update groups of these environments."""
    protected = sorted({env.name for env in environments if env is not None and env.protected})
    if protected and not user.has_perm("releases.launch_protected"):
        return (
            f"{user.get_username()} may not {action} update groups of the protected environment "
            f"{', '.join(protected)}: {roles.ask('launch_protected')}"
        )
    return ""


def check_update_group_change(user, environments, action: str, *, parameters=None) -> None:
    """Raise ActionRefused (audited) unless `user` may `action` update groups of `environments`."""
    refusal = update_group_refusal(user, environments, action)
    if refusal:
        envs = [e for e in environments if e is not None]
        refuse(
            refusal,
            f"updategroup_{action}",
            user=user,
            environment=envs[0] if len(envs) == 1 else None,
            parameters=parameters,
        )


def delete_update_groups(user, groups, *, via: str) -> int:
    """Delete update groups, one audit event per group with a copy of its fields."""
    groups = list(groups)
    check_update_group_change(
        user, [g.environment for g in groups], "delete", parameters={"objects": [str(g) for g in groups]}
    )
    with transaction.atomic():
        for group in groups:
            AuditEvent.record(
                "updategroup_delete",
                user=user,
                environment=group.environment,
                parameters={"object": str(group), "fields": copied_fields(group)},
                message=f"via {via}",
            )
            group.delete()
    return len(groups)


def copied_fields(obj) -> dict:
    """The row's fields as plain values (a related row by its name), for an audit record."""
    fields = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key:
            fields[field.name] = obj.pk
        elif field.is_relation:
            related = getattr(obj, field.name)
            fields[field.name] = None if related is None else str(related)
        else:
            fields[field.name] = plain(field.value_from_object(obj))
    return fields
