"""Issue 6 §6: the audit trail is complete (every delete path audited) and append-only (the ORM,
and on PostgreSQL a trigger, refuse changes; deleting what an event refers to never rewrites it)."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from releases import services
from releases.models import AuditEvent, Environment, ReleasePlan, UpdateGroup
from tests.support import R, make_user

pytestmark = pytest.mark.django_db

GROUPS = ("view_updategroup", "change_updategroup", "delete_updategroup", "add_updategroup")
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the append-only trigger is PostgreSQL's"
)


@pytest.fixture(autouse=True)
def runbook():
    call_command("loadrunbook", verbosity=0)


@pytest.fixture
def editor():
    """May edit update groups, but is not trusted with PROD."""
    return make_user("editor", permissions=GROUPS)


@pytest.fixture
def release_manager():
    return make_user("ops-lead", permissions=(*GROUPS, "launch_protected", "add_releaseplan", "launch_step"))


def _prod_groups():
    return UpdateGroup.objects.filter(environment__name="PROD")


def _bulk_delete(client, user, groups):
    client.force_login(user)
    data = {
        "action": "delete_selected",
        ACTION_CHECKBOX_NAME: [g.pk for g in groups],
        "post": "yes",
    }
    return client.post(reverse("admin:releases_updategroup_changelist"), data)


def _messages(response):
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def _rows():
    """Every audit row exactly as stored."""
    return list(AuditEvent.objects.order_by("pk").values())


# -- every delete path is audited ---------------------------------------------------------------------


def test_bulk_delete_of_update_groups_records_one_event_per_group_with_its_fields(client, release_manager):
    groups = list(_prod_groups())
    assert len(groups) > 1

    response = _bulk_delete(client, release_manager, groups)

    assert response.status_code == 302
    assert not _prod_groups().exists()
    events = AuditEvent.objects.filter(action="updategroup_delete", outcome="ok")
    assert sorted(e.parameters["fields"]["id"] for e in events) == sorted(g.pk for g in groups)
    first = next(e for e in events if e.parameters["fields"]["id"] == groups[0].pk)
    assert first.parameters["fields"]["name"] == groups[0].name
    assert first.parameters["fields"]["environment"] == "PROD" == first.environment_name
    assert first.username == "ops-lead"


def test_bulk_delete_of_prod_update_groups_needs_the_protected_permission(client, editor):
    before = _prod_groups().count()

    response = _bulk_delete(client, editor, list(_prod_groups()))

    assert response.status_code == 403
    assert _prod_groups().count() == before
    (event,) = AuditEvent.objects.filter(action="updategroup_delete", outcome="refused")
    assert (
        "editor may not delete update groups of the protected environment PROD: ask a PROD release manager"
        in (event.message)
    )


def test_bulk_delete_of_dev_update_groups_works_for_the_editor_and_is_audited(client, editor):
    groups = list(UpdateGroup.objects.filter(environment__name="DEV"))

    _bulk_delete(client, editor, groups)

    assert not UpdateGroup.objects.filter(environment__name="DEV").exists()
    assert AuditEvent.objects.filter(action="updategroup_delete", outcome="ok").count() == len(groups)


def test_deleting_one_prod_update_group_needs_the_protected_permission(client, editor):
    group = _prod_groups().first()
    client.force_login(editor)

    response = client.post(reverse("admin:releases_updategroup_delete", args=[group.pk]), {"post": "yes"})

    assert response.status_code == 302
    ((level, text),) = _messages(response)
    assert level == "error" and "may not delete update groups of the protected environment PROD" in text
    assert text.endswith("ask a PROD release manager")
    assert UpdateGroup.objects.filter(pk=group.pk).exists()
    assert AuditEvent.objects.filter(action="updategroup_delete", outcome="refused").count() == 1


def test_deleting_one_update_group_is_audited_with_its_fields(client, release_manager):
    group = _prod_groups().first()
    client.force_login(release_manager)

    client.post(reverse("admin:releases_updategroup_delete", args=[group.pk]), {"post": "yes"})

    assert not UpdateGroup.objects.filter(pk=group.pk).exists()
    event = AuditEvent.objects.get(action="updategroup_delete", outcome="ok")
    assert event.parameters["fields"]["step_number"] == group.step_number
    assert event.parameters["object"] == str(group)


def test_changing_a_prod_update_group_needs_the_protected_permission(client, editor):
    group = _prod_groups().first()
    client.force_login(editor)
    url = reverse("admin:releases_updategroup_change", args=[group.pk])
    data = {
        "environment": group.environment_id,
        "step_number": group.step_number,
        "position": group.position,
        "name": group.name,
        "status": "launched",
        "update_group": "",
        "where": "null",
        "enabled": "on",
        "updated_by": "",
    }

    response = client.post(url, data)

    assert response.status_code == 200
    assert "ask a PROD release manager" in " ".join(response.context["adminform"].form.non_field_errors())
    group.refresh_from_db()
    assert group.status != "launched" or group.where is not None
    assert AuditEvent.objects.filter(action="updategroup_change", outcome="refused").count() == 1


# -- append-only through the ORM ----------------------------------------------------------------------


def test_an_audit_event_cannot_be_deleted():
    event = AuditEvent.record("test", username="ops-lead")
    with pytest.raises(ValueError, match="append-only"):
        event.delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_audit_events_cannot_be_updated_or_deleted_in_bulk():
    event = AuditEvent.record("test", username="ops-lead", message="as it happened")
    with pytest.raises(ValueError, match="append-only"):
        AuditEvent.objects.filter(pk=event.pk).update(message="rewritten")
    with pytest.raises(ValueError, match="append-only"):
        AuditEvent.objects.bulk_update([event], ["message"])
    with pytest.raises(ValueError, match="append-only"):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).message == "as it happened"


@on_postgresql
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE releases_auditevent SET message = 'rewritten'",
        "DELETE FROM releases_auditevent",
    ],
)
def test_postgresql_refuses_changes_to_audit_rows_outside_the_orm(sql):
    AuditEvent.record("test", username="ops-lead", message="as it happened")
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert AuditEvent.objects.get(action="test").message == "as it happened"


@on_postgresql
def test_postgresql_still_lets_the_owner_truncate_the_audit_table():
    # The test runner flushes with TRUNCATE: the trigger is row-level and must not block it.
    AuditEvent.record("test", username="ops-lead")
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE releases_auditevent")
        assert not AuditEvent.objects.exists()
        transaction.set_rollback(True)
    assert AuditEvent.objects.exists()


# -- deleting what an event refers to never rewrites it -----------------------------------------------


def test_deleting_a_plan_leaves_its_audit_rows_untouched(release_manager):
    plan = services.create_plan("2.8.5", commit=R, user=release_manager)
    step = plan.steps.get(number=2)
    services.skip(step, release_manager, "done by hand")
    rows = _rows()
    assert any(r["plan_id"] == plan.pk and r["plan_version"] == "2.8.5" for r in rows)
    assert any((r["step_id"], r["step_number"], r["environment_name"]) == (step.pk, 2, "DEV") for r in rows)

    ReleasePlan.objects.filter(pk=plan.pk).delete()

    assert _rows() == rows


def test_deleting_a_user_leaves_their_audit_rows_untouched(release_manager):
    services.create_plan("2.8.5", commit=R, user=release_manager)
    rows = _rows()
    assert any(r["user_id"] == release_manager.pk for r in rows)

    get_user_model().objects.filter(pk=release_manager.pk).delete()

    assert _rows() == rows


def test_deleting_an_environment_leaves_its_audit_rows_untouched(client, release_manager):
    group = UpdateGroup.objects.filter(environment__name="DEV").first()
    client.force_login(release_manager)
    client.post(reverse("admin:releases_updategroup_delete", args=[group.pk]), {"post": "yes"})
    rows = _rows()
    assert any(r["environment_name"] == "DEV" for r in rows)

    Environment.objects.filter(name="DEV").delete()

    assert _rows() == rows


def test_audit_list_shows_the_copied_names_after_the_plan_is_gone(admin_client, release_manager):
    plan = services.create_plan("2.8.5", commit=R, user=release_manager)
    ReleasePlan.objects.filter(pk=plan.pk).delete()

    response = admin_client.get(reverse("admin:releases_auditevent_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    assert '<td class="field-where">2.8.5</td>' in html  # release · step · environment
    event = AuditEvent.objects.get(action="create_plan")
    detail = admin_client.get(reverse("admin:releases_auditevent_change", args=[event.pk]))
    assert detail.status_code == 200 and "2.8.5" in detail.content.decode()


def _inline_edit(client, user, moved: UpdateGroup):
    """The changelist's list_editable POST, disabling one group (positions are dragged, not typed)."""
    groups = list(UpdateGroup.objects.all())
    data = {"form-TOTAL_FORMS": len(groups), "form-INITIAL_FORMS": len(groups), "_save": "Save"}
    for i, group in enumerate(groups):
        data[f"form-{i}-id"] = group.pk
        if group.enabled and group.pk != moved.pk:
            data[f"form-{i}-enabled"] = "on"
    client.force_login(user)
    return client.post(reverse("admin:releases_updategroup_changelist"), data)


def test_changelist_inline_edit_of_a_prod_update_group_needs_the_protected_permission(client, editor):
    prod = _prod_groups().first()

    response = _inline_edit(client, editor, prod)

    assert response.status_code == 200  # the changelist again, with the row's error
    assert "may not change update groups of the protected environment PROD: ask a PROD release manager" in (
        response.content.decode()
    )
    assert UpdateGroup.objects.get(pk=prod.pk).enabled


def test_changelist_inline_edit_of_a_dev_update_group_is_saved_and_audited(client, editor):
    dev = UpdateGroup.objects.filter(environment__name="DEV").first()

    response = _inline_edit(client, editor, dev)

    assert response.status_code == 302
    assert not UpdateGroup.objects.get(pk=dev.pk).enabled
    event = AuditEvent.objects.get(action="updategroup_change", outcome="ok")
    assert event.parameters["changes"] == {"enabled": [True, False]}
