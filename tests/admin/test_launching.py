"""The launch confirmation (blast radius, typed PROD name, confirmed counts) and the roles."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse

from releases import roles, services
from releases.models import AuditEvent, StepRun, UpdateGroup
from tests.admin_helpers import confirm_launch, mark_done, url
from tests.support import R, configure_environments, make_user, sites, tasks_not_sent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sent_tasks():
    with tasks_not_sent() as send:
        yield send


@pytest.fixture
def operator():
    call_command("loadrunbook", verbosity=0)
    return make_user("ops-lead")


@pytest.fixture
def plan(operator):
    return services.create_plan("2.8.5", commit=R, user=operator)


@pytest.fixture
def dev(simulator):
    sim = simulator("dev", password="dev-secret-Zq7")
    configure_environments({"DEV": sim})
    return sim


@pytest.fixture
def prod(simulator):
    sim = simulator("prod", password="prod-secret-Zq7", sites=120)
    configure_environments({"PROD": sim})
    return sim


def member(username, role):
    user = make_user(username, permissions=())
    roles.ensure_groups()  # a transactional test before may have flushed them
    user.groups.add(Group.objects.get(name=role))
    return type(user).objects.get(pk=user.pk)


def test_stage_confirmation_shows_every_step_it_may_reach_with_deletions_and_updates_apart(
    client, operator, plan, dev
):
    available = len(sites(dev, status="available"))
    targeted = len(sites(dev, path={"$in": ["webcentral", "homepage"]}))
    client.force_login(operator)
    response = client.get(url("launch", plan, 2, query="?stage=1"))
    radius = response.context["radius"]
    assert [p["number"] for p in radius["previews"]] == [2, 3, 4]
    assert (radius["deletions"], radius["updates"]) == (available, targeted)
    assert radius["total"] == available + targeted > 0
    html = response.content.decode()
    assert f'<td class="num" id="radius-deletions">{available}</td>' in html
    assert f'<td class="num" id="radius-updates">{targeted}</td>' in html
    assert 'id="preview-step-4"' in html and "Yes, launch step 2 and its stage" in html


def test_launch_passes_the_counts_the_operator_saw(client, operator, plan, dev):
    client.force_login(operator)
    page, response = confirm_launch(client, plan, 2, stage=True)
    assert response.status_code == 302
    seen = page.context["radius"]["confirmed"]
    assert set(seen) == {3, 4}
    for number in (3, 4):
        assert StepRun.objects.get(plan=plan, number=number).confirmed_targets == seen[number]
    event = AuditEvent.objects.get(action="launch", outcome="ok")
    assert event.parameters["confirmed"] == {str(n): c for n, c in seen.items()}


def test_a_forged_or_missing_confirmation_launches_nothing_and_is_audited(client, operator, plan, dev):
    client.force_login(operator)
    response = client.post(url("launch", plan, 2), {"confirmed": "made-up"})
    assert response.status_code == 200 and "stale or incomplete" in response.context["error"]
    assert StepRun.objects.get(plan=plan, number=2).state == "pending"
    assert AuditEvent.objects.filter(action="launch", outcome="refused").count() == 1


def test_prod_launches_only_with_its_name_typed(client, operator, plan, prod, sent_tasks):
    mark_done(plan, *range(2, 12))
    client.force_login(operator)
    page, refused = confirm_launch(client, plan, 12, typed="PROD ")  # stripped: still PROD
    assert 'name="confirm_environment"' in page.content.decode()
    assert refused.status_code == 302
    assert StepRun.objects.get(plan=plan, number=12).state == "running"
    assert sent_tasks.call_count == 1


def test_prod_launch_with_the_wrong_name_keeps_the_page_and_says_why(client, operator, plan, prod):
    mark_done(plan, *range(2, 12))
    client.force_login(operator)
    _, response = confirm_launch(client, plan, 12, typed="DEV")
    assert response.status_code == 200
    assert "you typed &#x27;DEV&#x27;" in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=12).state == "pending"
    assert AuditEvent.objects.get(action="launch", outcome="refused").parameters["typed"] == "DEV"


# -- roles -------------------------------------------------------------------------------------


def test_the_migration_creates_the_three_roles():
    import importlib

    from django.apps import apps

    Group.objects.all().delete()  # run the migration's own function, whatever ran before
    importlib.import_module("releases.migrations.0006_roles").create_roles(apps, None)
    for name, codenames in roles.ROLES.items():
        group = Group.objects.get(name=name)
        assert set(group.permissions.values_list("codename", flat=True)) == set(codenames)
    assert "launch_step" not in roles.VIEW and "launch_protected" not in roles.MANAGE


def test_a_viewer_gets_a_refusal_page_before_any_atlas_call(client, plan, dev):
    viewer = member("viewer", roles.VIEWERS)
    dev.injector.record = True
    client.force_login(viewer)
    response = client.get(url("launch", plan, 2, query="?stage=1"))
    assert response.status_code == 403
    assert 'id="refusal-reason"' in response.content.decode()
    assert dev.injector.requests == []
    assert AuditEvent.objects.filter(action="launch", outcome="refused", username="viewer").count() == 1


def test_a_viewer_sees_the_plan_without_any_operation(client, plan):
    viewer = member("viewer", roles.VIEWERS)
    client.force_login(viewer)
    html = client.get(url("change", plan)).content.decode().split('id="release-steps"')[1]
    assert 'data-step="2"' in html
    operations = [part.split("</div>")[0] for part in html.split('data-live-part="ops">')[1:]]
    assert len(operations) == 14
    for part in operations:
        assert 'class="button"' not in part and 'type="submit"' not in part and "<form" not in part
    assert url("launch", plan, 2) not in html
    assert client.get(reverse("admin:releases_releaseplan_add")).status_code == 403


def test_a_release_manager_launches_dev_but_is_refused_prod(client, plan, dev):
    manager = member("manager", roles.RELEASE_MANAGERS)
    client.force_login(manager)
    _, response = confirm_launch(client, plan, 2)
    assert StepRun.objects.get(plan=plan, number=2).state == "running"
    mark_done(plan, *range(2, 12))
    refused = client.get(url("launch", plan, 12))
    assert refused.status_code == 403 and "ask a PROD release manager" in refused.content.decode()


def test_a_release_manager_edits_dev_update_groups_but_not_prod(client, operator):
    manager = member("manager", roles.RELEASE_MANAGERS)
    client.force_login(manager)
    for env, allowed in (("DEV", True), ("PROD", False)):
        group = UpdateGroup.objects.filter(environment__name=env).first()
        data = {
            "environment": group.environment_id, "step_number": group.step_number, "position": group.position,
            "name": group.name + " (edited)", "status": group.status or "", "update_group": group.update_group or "",
            "where": json.dumps(group.where) if group.where is not None else "", "enabled": "on",
        }  # fmt: skip
        client.post(reverse("admin:releases_updategroup_change", args=[group.pk]), data)
        group.refresh_from_db()
        assert group.name.endswith("(edited)") is allowed, env


def test_a_prod_release_manager_opens_the_prod_confirmation(client, plan, prod):
    mark_done(plan, *range(2, 12))
    boss = member("boss", roles.PROD_RELEASE_MANAGERS)
    client.force_login(boss)
    response = client.get(url("launch", plan, 12))
    assert response.status_code == 200 and 'name="confirm_environment"' in response.content.decode()


def test_demo_accounts_are_one_per_role_and_created_once():
    first = roles.ensure_demo_accounts("pw")
    assert roles.ensure_demo_accounts("other") == first
    for username, role in first:
        user = get_user_model().objects.get(username=username)
        groups = [] if role == roles.SUPERUSER else [role]  # a superuser needs no group
        assert (
            user.is_staff
            and user.check_password("pw")
            and list(user.groups.values_list("name", flat=True)) == groups
        )
        assert user.is_superuser == (role == roles.SUPERUSER)
    assert {role for _, role in first} == set(roles.ROLES) | {roles.SUPERUSER}
