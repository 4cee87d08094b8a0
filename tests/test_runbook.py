"""loadrunbook, update-group validation, the audit trail's append-only rule, and migrations."""

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from releases.models import AuditEvent, Environment, UpdateGroup
from releases.runbook import DEFAULT_GROUPS, STEPS

pytestmark = pytest.mark.django_db


def test_loadrunbook_creates_three_environments_with_prod_protected():
    call_command("loadrunbook", stdout=io.StringIO())
    envs = {e.name: e for e in Environment.objects.all()}
    assert list(envs) == ["DEV", "TEST", "PROD"]
    assert [envs[n].protected for n in envs] == [False, False, True]
    assert envs["PROD"].password_env == "ATLAS_PROD_PASSWORD"


def test_loadrunbook_creates_the_seed_batches_in_order():
    call_command("loadrunbook", stdout=io.StringIO())
    prod14 = UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position")
    assert [g.selector() for g in prod14] == [
        {"status": "installed", "update_group": g} for g in (0, 1, 2)
    ] + [{"status": "launched", "update_group": g} for g in range(7)]
    test6 = UpdateGroup.objects.get(environment__name="TEST", step_number=6)
    assert test6.selector() == {"status": "launched", "update_group": {"$ne": 13}}
    dev4 = UpdateGroup.objects.get(environment__name="DEV", step_number=4)
    assert set(dev4.selector()["path"]["$in"]) == {"webcentral", "homepage"}
    assert UpdateGroup.objects.count() == sum(len(groups) for groups in DEFAULT_GROUPS.values())


def test_loadrunbook_is_idempotent():
    call_command("loadrunbook", stdout=io.StringIO())
    call_command("loadrunbook", stdout=io.StringIO())
    assert Environment.objects.count() == 3
    assert UpdateGroup.objects.count() == sum(len(groups) for groups in DEFAULT_GROUPS.values())


def test_loadrunbook_update_keeps_operator_edits_unless_asked():
    call_command("loadrunbook", stdout=io.StringIO())
    dev4 = UpdateGroup.objects.get(environment__name="DEV", step_number=4)
    edited = {"path": {"$in": ["webcentral-dev", "homepage"]}}
    UpdateGroup.objects.filter(pk=dev4.pk).update(where=edited, edited=True)
    call_command("loadrunbook", "--update", stdout=io.StringIO())
    assert UpdateGroup.objects.get(pk=dev4.pk).where == edited
    call_command("loadrunbook", "--update", "--reset-edited", stdout=io.StringIO())
    assert UpdateGroup.objects.get(pk=dev4.pk).where == DEFAULT_GROUPS[("DEV", 4)][0]["where"]


def test_runbook_has_fourteen_steps_with_one_manual_gate_in_the_middle():
    assert [s.number for s in STEPS] == list(range(1, 15))
    assert [s.number for s in STEPS if s.kind == "finalize"] == [7]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"$where": "this.status == 'launched'"}, "$where"),
        ({"status": {"$regexx": "l"}}, "$regexx"),
        ({"update_group": -1}, "update group"),
        ({"update_group": {"$in": [1, "two"]}}, "update group"),
        (["status", "launched"], "JSON object"),
        ({}, "every site"),
    ],
)
def test_update_group_refuses_a_bad_selector_naming_the_problem(where, message):
    env = Environment.objects.create(
        name="DEV", api_url="http://127.0.0.1:1/", username="u", password_env="X"
    )
    group = UpdateGroup(environment=env, step_number=4, name="bad", where=where)
    with pytest.raises(ValidationError) as info:
        group.full_clean()
    assert message in str(info.value)


def test_update_group_needs_a_status_group_or_selector():
    env = Environment.objects.create(
        name="DEV", api_url="http://127.0.0.1:1/", username="u", password_env="X"
    )
    with pytest.raises(ValidationError):
        UpdateGroup(environment=env, step_number=11, name="empty").full_clean()


def test_environment_refuses_a_password_variable_that_is_not_a_variable_name():
    env = Environment(name="DEV", api_url="http://127.0.0.1:1/", username="u", password_env="hunter2 secret")
    with pytest.raises(ValidationError) as info:
        env.full_clean()
    assert "password_env" in info.value.message_dict


def test_audit_events_cannot_be_changed():
    event = AuditEvent.record("test", username="ops-lead")
    event.message = "rewritten"
    with pytest.raises(ValueError):
        event.save()


def test_models_and_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", stdout=io.StringIO())
