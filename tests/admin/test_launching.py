"""The launch confirmation (blast radius, typed PROD name, confirmed counts) and the roles."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse

from releases import roles
from releases.models import AuditEvent, Environment, StepRun, UpdateGroup
from tests.admin_helpers import confirm_launch, mark_done, url
from tests.support import sites

# Nothing is enqueued: `send_task` is replaced for every test (`sent_tasks`), so tests count it.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]


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


def test_prod_launches_only_with_its_name_typed(client, operator, plan_at, prod, sent_tasks):
    plan = plan_at(12)
    client.force_login(operator)
    page, refused = confirm_launch(client, plan, 12, typed="PROD ")  # stripped: still PROD
    assert 'name="confirm_environment"' in page.content.decode()
    assert refused.status_code == 302
    assert StepRun.objects.get(plan=plan, number=12).state == "running"
    assert sent_tasks.call_count == 1


def test_prod_launch_with_the_wrong_name_keeps_the_page_and_says_why(client, operator, plan_at, prod):
    plan = plan_at(12)
    client.force_login(operator)
    _, response = confirm_launch(client, plan, 12, typed="DEV")
    assert response.status_code == 200
    assert "you typed &#x27;DEV&#x27;" in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=12).state == "pending"
    assert AuditEvent.objects.get(action="launch", outcome="refused").parameters["typed"] == "DEV"


def test_launch_confirmation_shows_batch_counts(client, operator, plan_at, dev):
    plan = plan_at(3)
    expected = sum(
        1 for s in dev.db["sites"].find({"status": "available", "_deleted": {"$ne": True}})
    )  # step 3 deletes the available sites
    client.force_login(operator)
    response = client.get(url("launch", plan, 3))
    assert response.status_code == 200
    (preview,) = response.context["radius"]["previews"]
    (batch,) = preview["batches"]
    assert batch["count"] == expected > 0
    assert f'<td class="batch-count">{expected}</td>' in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=3).state == "pending"  # GET launches nothing


def test_post_launch_starts_the_step_and_audits_it(client, operator, plan, sent_tasks, dev):
    client.force_login(operator)
    _, response = confirm_launch(client, plan, 2)
    assert response.status_code == 302 and response.url == url("change", plan)
    assert StepRun.objects.get(plan=plan, number=2).state == "running"
    assert AuditEvent.objects.filter(action="launch", outcome="ok", username=operator.username).count() == 1
    assert sent_tasks.call_count == 1  # the worker task, counted rather than sent


def test_stage_launch_continues_the_stage(client, operator, plan, dev):
    client.force_login(operator)
    confirm_launch(client, plan, 2, stage=True)
    step = StepRun.objects.get(plan=plan, number=2)
    assert (step.state, step.continue_stage) == ("running", True)


def test_prod_launch_with_wrong_typed_name_is_refused_and_audited(client, operator, plan):
    StepRun.objects.filter(plan=plan, number__lt=12).update(state="succeeded")
    Environment.objects.filter(name="PROD").update(max_attempts=1)  # no Atlas here: fail the preview fast
    client.force_login(operator)
    response = client.post(url("launch", plan, 12), {"confirm_environment": "prod"})
    assert response.status_code == 200
    assert "PROD is protected" in response.context["error"]
    assert StepRun.objects.get(plan=plan, number=12).state == "pending"
    refused = AuditEvent.objects.get(action="launch", outcome="refused")
    assert refused.username == operator.username and refused.parameters["typed"] == "prod"


def test_prod_launch_page_asks_for_the_environment_name(client, operator, plan_at):
    assert Environment.objects.get(name="PROD").protected
    Environment.objects.filter(name="PROD").update(max_attempts=1)  # no Atlas here: fail the preview fast
    plan = plan_at(12)
    client.force_login(operator)
    response = client.get(url("launch", plan, 12))
    assert 'name="confirm_environment"' in response.content.decode()


def test_launch_without_permission_is_a_refusal_page(client, plan, viewer):
    client.force_login(viewer)
    response = client.post(url("launch", plan, 2))
    assert response.status_code == 403
    assert "viewer may not launch steps: ask a release manager" in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=2).state == "pending"


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


def test_a_viewer_gets_a_refusal_page_before_any_atlas_call(client, plan, dev, viewer):
    dev.injector.record = True
    client.force_login(viewer)
    response = client.get(url("launch", plan, 2, query="?stage=1"))
    assert response.status_code == 403
    assert 'id="refusal-reason"' in response.content.decode()
    assert dev.injector.requests == []
    assert AuditEvent.objects.filter(action="launch", outcome="refused", username="viewer").count() == 1


def test_a_viewer_sees_the_plan_without_any_operation(client, plan, viewer):
    client.force_login(viewer)
    html = client.get(url("change", plan)).content.decode().split('id="release-steps"')[1]
    assert 'data-step="2"' in html
    operations = [part.split("</div>")[0] for part in html.split('data-live-part="ops">')[1:]]
    assert len(operations) == 14
    for part in operations:
        assert 'class="button"' not in part and 'type="submit"' not in part and "<form" not in part
    assert url("launch", plan, 2) not in html
    assert client.get(reverse("admin:releases_releaseplan_add")).status_code == 403


def test_a_release_manager_launches_dev_but_is_refused_prod(client, plan, dev, release_manager):
    client.force_login(release_manager)
    _, response = confirm_launch(client, plan, 2)
    assert StepRun.objects.get(plan=plan, number=2).state == "running"
    mark_done(plan, *range(2, 12))
    refused = client.get(url("launch", plan, 12))
    assert refused.status_code == 403 and "ask a PROD release manager" in refused.content.decode()


def test_a_release_manager_edits_dev_update_groups_but_not_prod(client, runbook, release_manager):
    client.force_login(release_manager)
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


def test_a_prod_release_manager_opens_the_prod_confirmation(client, plan_at, prod, prod_manager):
    plan = plan_at(12)
    client.force_login(prod_manager)
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
