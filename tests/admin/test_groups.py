"""Issue 8, update groups: drag-and-drop reordering through the admin's own ordering endpoint
(audited, in the row's history, positions unique under concurrent reorders), disabled groups
skipped by the snapshot and shown in the preview, and the sites each selector matches now, read
from Atlas without ever holding up the changelist."""

import json
import threading
import time
from io import StringIO

import pytest
from django.contrib.admin.models import LogEntry
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from releases import services
from releases.models import AuditEvent, Environment, SiteResult, UpdateGroup
from releases.services import update_groups
from releases.states import StepState
from tests.support import R, configure_environments, make_user, sites
from tests.test_engine_faults import closed_port, prepare_prod, release_item, run_inline, start_prod

GROUPS = ("view_updategroup", "change_updategroup", "delete_updategroup", "add_updategroup")
SORT_URL = "admin:releases_updategroup_sortable_update"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()  # the matching counts are cached (the default cache lives in this process)
    yield
    cache.clear()


@pytest.fixture
def manager(db):
    call_command("loadrunbook", verbosity=0)
    return make_user("ops-lead", permissions=(*GROUPS, "launch_protected", "add_releaseplan", "launch_step"))


def _prod14():
    return list(UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position"))


def _scope_url(env_name: str, step: int) -> str:
    env = Environment.objects.get(name=env_name)
    return (
        reverse("admin:releases_updategroup_changelist")
        + f"?environment__id__exact={env.pk}&step_number={step}"
    )


def _drag(client, moves):
    """What sortable2's script posts after a drag: the moved range as [[id, position], …]."""
    body = json.dumps({"updatedItems": [[str(pk), position] for pk, position in moves]})
    return client.post(reverse(SORT_URL), body, content_type="application/json")


@pytest.mark.django_db
def test_dragging_a_batch_up_is_audited_with_positions_and_shown_in_its_history(client, manager):
    first, second, third = _prod14()[:3]
    client.force_login(manager)
    page = client.get(_scope_url("PROD", 14)).content.decode()
    assert f'class="drag handle" pk="{third.pk}" order="2"' in page  # draggable in this scope
    assert reverse(SORT_URL) in page

    response = _drag(client, [(third.pk, 0), (first.pk, 1), (second.pk, 2)])  # third dropped on top

    assert response.status_code == 200, response.content
    assert [g.pk for g in _prod14()[:3]] == [third.pk, first.pk, second.pk]
    event = AuditEvent.objects.get(action="updategroup_reorder")
    assert (event.username, event.environment_name, event.outcome) == ("ops-lead", "PROD", "ok")
    assert event.parameters["changes"] == {str(third): [2, 0], str(first): [0, 1], str(second): [1, 2]}
    history = client.get(reverse("admin:releases_updategroup_history", args=[third.pk])).content.decode()
    assert "Position 2 → 0 (via drag and drop)" in history
    assert LogEntry.objects.filter(
        object_id=str(first.pk), change_message__contains="Position 0 → 1"
    ).exists()


@pytest.mark.django_db
def test_rows_are_not_draggable_until_one_environment_and_step_is_chosen(client, manager):
    client.force_login(manager)
    page = client.get(reverse("admin:releases_updategroup_changelist")).content.decode()
    assert 'class="drag handle"' not in page
    assert "filter by one environment and one step" in page


@pytest.mark.django_db
def test_reordering_prod_batches_needs_the_protected_permission(client, manager):
    editor = make_user("editor", permissions=GROUPS)
    before = [g.pk for g in _prod14()]
    client.force_login(editor)

    response = _drag(client, [(before[1], 0), (before[0], 1)])

    assert response.status_code == 403
    assert [g.pk for g in _prod14()] == before
    assert AuditEvent.objects.filter(
        action="updategroup_change", outcome="refused", username="editor"
    ).exists()


@pytest.mark.django_db
def test_editing_a_selector_records_the_values_in_the_history(client, manager):
    group = UpdateGroup.objects.get(environment__name="DEV", step_number=4)
    client.force_login(manager)
    page = client.get(reverse("admin:releases_updategroup_change", args=[group.pk])).content.decode()
    assert "&quot;$in&quot;: [" in page  # the selector shown as indented JSON
    data = {"environment": group.environment_id, "step_number": 4, "name": group.name, "status": "",
            "update_group": "", "where": '{"path": {"$in": ["webcentral"]}}', "enabled": "on"}  # fmt: skip

    response = client.post(reverse("admin:releases_updategroup_change", args=[group.pk]), data)

    assert response.status_code == 302
    entry = LogEntry.objects.get(object_id=str(group.pk))
    assert 'Selector {"path": {"$in": ["webcentral", "homepage"]}} → {"path": {"$in": ["webcentral"]}}' in (
        entry.get_change_message()
    )
    event = AuditEvent.objects.get(action="updategroup_change")
    assert event.parameters["changes"]["where"][1] == {"path": {"$in": ["webcentral"]}}


@pytest.mark.django_db
def test_an_invalid_selector_is_refused_by_the_form(client, manager):
    group = UpdateGroup.objects.get(environment__name="DEV", step_number=4)
    client.force_login(manager)
    data = {"environment": group.environment_id, "step_number": 4, "name": group.name, "status": "",
            "update_group": "", "where": '{"$where": "1"}', "enabled": "on"}  # fmt: skip

    response = client.post(reverse("admin:releases_updategroup_change", args=[group.pk]), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["where"]
    assert not AuditEvent.objects.filter(action="updategroup_change").exists()


@pytest.mark.django_db
def test_a_group_added_in_the_admin_goes_last_and_its_history_has_the_values(client, manager):
    dev = Environment.objects.get(name="DEV")
    client.force_login(manager)
    data = {"environment": dev.pk, "step_number": 3, "name": "locked sites", "status": "locked",
            "update_group": "", "where": "null", "enabled": "on"}  # fmt: skip

    response = client.post(reverse("admin:releases_updategroup_add"), data)

    assert response.status_code == 302
    added = UpdateGroup.objects.get(name="locked sites")
    assert [g.position for g in UpdateGroup.objects.filter(environment=dev, step_number=3)] == [0, 1]
    assert added.position == 1 and added.edited and added.updated_by == "ops-lead"
    entry = LogEntry.objects.get(object_id=str(added.pk))
    assert "Status — → locked" in entry.get_change_message()
    event = AuditEvent.objects.get(action="updategroup_add")
    assert event.parameters["changes"]["status"] == [None, "locked"]


@pytest.mark.django_db
def test_a_group_moved_to_another_step_goes_last_there_and_positions_stay_unique(manager):
    group = _prod14()[0]
    group.step_number = 13
    update_groups.save_update_group(manager, group, ["step_number"], via="test")
    assert [g.position for g in UpdateGroup.objects.filter(environment__name="PROD", step_number=13)] == [
        0,
        1,
    ]
    assert [g.position for g in _prod14()] == list(range(9))  # closed up behind it


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_reorders_leave_positions_unique(manager):
    # PostgreSQL: the reorders meet at the row locks (without select_for_update this fails there).
    # SQLite: the portal's IMMEDIATE transactions take the write lock at BEGIN, one after the other.
    prod = Environment.objects.get(name="PROD")
    ids = [g.pk for g in _prod14()]
    barrier = threading.Barrier(2)
    errors = []

    def reorder(requested):
        try:
            barrier.wait(timeout=10)
            update_groups.reorder_update_groups(manager, prod, 14, requested, via="test")
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    for round_ in range(8):
        # Each drags a different batch onto the same position: applied blindly, two rows share it.
        a, b = ids[round_], ids[-1 - round_]
        threads = [
            threading.Thread(target=reorder, args=({a: 0},)),
            threading.Thread(target=reorder, args=({b: 0},)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        positions = [g.position for g in _prod14()]
        assert sorted(positions) == list(range(len(ids))), positions
        assert {_prod14()[0].pk, _prod14()[1].pk} == {a, b}  # both moves landed at the top


# -- disabled groups -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_disabled_group_is_shown_in_the_preview_and_skipped_by_the_snapshot(client):
    sim = start_prod(200)
    try:
        configure_environments({"PROD": sim})
        user = make_user(permissions=(*GROUPS, "launch_protected", "add_releaseplan", "launch_step",
                                      "finalize_release", "change_environment"))  # fmt: skip
        plan = services.create_plan("2.8.5", commit=R, user=user)
        step = prepare_prod(plan, user)
        disabled = UpdateGroup.objects.get(environment__name="PROD", step_number=14, name="launched group 3")
        client.force_login(user)
        _disable_in_changelist(client, disabled)

        preview = _preview_json(plan.version, 14)
        assert {"name": "launched group 3", "where": {"status": "launched", "update_group": 3}} in (
            preview["disabled"]
        )
        assert "launched group 3" not in [b["name"] for b in preview["batches"]]
        text = StringIO()
        call_command("release", "preview", plan.version, "--step", "14", stdout=text)
        assert "    launched group 3: disabled (skipped)" in text.getvalue()
        assert run_inline(step, user) == StepState.SUCCEEDED

        assert not SiteResult.objects.filter(step=step, batch_name="launched group 3").exists()
        profile = release_item(sim)["_id"]
        left = sites(sim, status="launched", update_group=3)
        assert left and all(s["code"]["profile"] != profile for s in left)
    finally:
        sim.stop()


def _disable_in_changelist(client, group):
    rows = list(UpdateGroup.objects.all())
    data = {"form-TOTAL_FORMS": len(rows), "form-INITIAL_FORMS": len(rows), "_save": "Save"}
    for i, row in enumerate(rows):
        data[f"form-{i}-id"] = row.pk
        if row.enabled and row.pk != group.pk:
            data[f"form-{i}-enabled"] = "on"
    assert client.post(reverse("admin:releases_updategroup_changelist"), data).status_code == 302
    assert "Enabled True → False" in LogEntry.objects.get(object_id=str(group.pk)).get_change_message()


def _preview_json(version, step):
    out = StringIO()
    call_command("release", "preview", version, "--step", str(step), "--json", stdout=out)
    (preview,) = json.loads(out.getvalue())
    return preview


# -- sites matched now -----------------------------------------------------------------------------


def _timed_get(client, url):
    started = time.monotonic()
    response = client.get(url)
    return response, time.monotonic() - started


def _matching_cells(response) -> list[str]:
    html = response.content.decode()
    return [part.split("</td>")[0] for part in html.split('<td class="field-matching_sites">')[1:]]


@pytest.mark.django_db
def test_matching_sites_of_an_unreachable_atlas_show_unknown_at_once(client, manager):
    Environment.objects.filter(name="DEV").update(api_url=f"http://127.0.0.1:{closed_port()}/")
    client.force_login(manager)

    response, elapsed = _timed_get(client, _scope_url("DEV", 3))

    assert response.status_code == 200
    assert _matching_cells(response) == ["unknown"]
    assert elapsed < 2.5


@pytest.mark.django_db
def test_matching_sites_never_wait_for_a_slow_atlas(client, manager, simulator):
    sim = simulator("dev", password="dev-secret-Zq7")
    configure_environments({"DEV": sim})
    sim.set_faults(slow_ms=4000, slow_rate=1.0)
    client.force_login(manager)

    for _ in range(2):  # the second load finds the count still on its way: no second wait on Atlas
        response, elapsed = _timed_get(client, _scope_url("DEV", 3))
        assert response.status_code == 200
        assert _matching_cells(response) == ["unknown"]
        assert elapsed < 2.5


@pytest.mark.django_db
def test_matching_sites_are_counted_in_atlas_and_cached(client, manager, simulator):
    sim = simulator("dev", password="dev-secret-Zq7")
    configure_environments({"DEV": sim})
    available = len(sites(sim, status={"$in": ["available"]}))
    client.force_login(manager)

    first, _ = _timed_get(client, _scope_url("DEV", 3))
    assert _matching_cells(first) == [str(available)]
    sim.set_faults(slow_ms=4000, slow_rate=1.0)  # Atlas is slow now: the count comes from the cache
    second, elapsed = _timed_get(client, _scope_url("DEV", 3))

    assert _matching_cells(second) == [str(available)]
    assert elapsed < 1.0


@pytest.mark.django_db
def test_update_group_changelist_queries_are_bounded(client, manager, django_assert_max_num_queries):
    Environment.objects.update(api_url=f"http://127.0.0.1:{closed_port()}/")
    client.force_login(manager)
    with django_assert_max_num_queries(16):
        response = client.get(reverse("admin:releases_updategroup_changelist"))
    assert response.status_code == 200
    assert len(_matching_cells(response)) == UpdateGroup.objects.count()


@pytest.mark.django_db
def test_loadrunbook_update_recreating_a_default_group_keeps_positions_unique():
    call_command("loadrunbook", verbosity=0)
    groups = list(UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position"))
    first, *rest = groups
    rest[-1].delete()  # an operator removed the last default group…
    UpdateGroup.objects.filter(pk=first.pk).update(
        position=len(groups) - 1, edited=True
    )  # …moved the first last

    call_command("loadrunbook", "--update", verbosity=0)  # re-creates the removed one at its default position

    positions = list(
        UpdateGroup.objects.filter(environment__name="PROD", step_number=14).values_list(
            "position", flat=True
        )
    )
    assert sorted(positions) == list(range(len(groups)))
    event = AuditEvent.objects.filter(action="loadrunbook").order_by("-id").first()
    assert event.parameters["renumbered_groups"]
