"""The release operations in the admin: the plan page, the two-step launch and the controls.

Nothing is enqueued: `send_task` is replaced for every test (`tasks_not_sent`), so tests count it.
"""

import pytest
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.urls import reverse

from releases import services
from releases.models import AuditEvent, Environment, StepRun
from tests.admin_helpers import confirm_launch
from tests.support import R, configure_environments, make_user, tasks_not_sent

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


def _url(name, plan, *args):
    return reverse(f"admin:releases_releaseplan_{name}", args=[plan.pk, *args])


def _messages(response):
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def _mark_done(plan, *numbers):
    StepRun.objects.filter(plan=plan, number__in=numbers).update(state="succeeded")


def test_plan_page_lists_all_steps_with_bounded_queries(
    client, operator, plan, django_assert_max_num_queries
):
    client.force_login(operator)
    with django_assert_max_num_queries(15):
        response = client.get(_url("change", plan))
    assert response.status_code == 200
    html = response.content.decode()
    for number in range(1, 15):
        assert f'id="step-{number}"' in html
    assert _url("launch", plan, 2) in html  # step 2 is pending and launchable


def test_plan_page_hides_launch_buttons_without_permission(client, plan):
    viewer = make_user("viewer", permissions=("view_releaseplan",))
    client.force_login(viewer)
    response = client.get(_url("change", plan))
    assert response.status_code == 200
    assert 'id="step-2"' in response.content.decode()
    assert _url("launch", plan, 2) not in response.content.decode()


def test_launch_confirmation_shows_batch_counts(client, operator, plan, simulator):
    sim = simulator("dev", password="dev-secret-Zq7")
    configure_environments({"DEV": sim})
    _mark_done(plan, 2)
    expected = sum(
        1 for s in sim.db["sites"].find({"status": "available", "_deleted": {"$ne": True}})
    )  # step 3 deletes the available sites
    client.force_login(operator)
    response = client.get(_url("launch", plan, 3))
    assert response.status_code == 200
    (preview,) = response.context["radius"]["previews"]
    (batch,) = preview["batches"]
    assert batch["count"] == expected > 0
    assert f'<td class="batch-count">{expected}</td>' in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=3).state == "pending"  # GET launches nothing


def test_post_launch_starts_the_step_and_audits_it(client, operator, plan, sent_tasks, simulator):
    configure_environments({"DEV": simulator("dev", password="dev-secret-Zq7")})
    client.force_login(operator)
    _, response = confirm_launch(client, plan, 2)
    assert response.status_code == 302 and response.url == _url("change", plan)
    assert StepRun.objects.get(plan=plan, number=2).state == "running"
    assert AuditEvent.objects.filter(action="launch", outcome="ok", username="ops-lead").count() == 1
    assert sent_tasks.call_count == 1  # the worker task, counted rather than sent


def test_prod_launch_with_wrong_typed_name_is_refused_and_audited(client, operator, plan):
    StepRun.objects.filter(plan=plan, number__lt=12).update(state="succeeded")
    Environment.objects.filter(name="PROD").update(max_attempts=1)  # no Atlas here: fail the preview fast
    client.force_login(operator)
    response = client.post(_url("launch", plan, 12), {"confirm_environment": "prod"})
    assert response.status_code == 200
    assert "PROD is protected" in response.context["error"]
    assert StepRun.objects.get(plan=plan, number=12).state == "pending"
    refused = AuditEvent.objects.get(action="launch", outcome="refused")
    assert refused.username == "ops-lead" and refused.parameters["typed"] == "prod"


def test_prod_launch_page_asks_for_the_environment_name(client, operator, plan):
    assert Environment.objects.get(name="PROD").protected
    Environment.objects.filter(name="PROD").update(max_attempts=1)  # no Atlas here: fail the preview fast
    StepRun.objects.filter(plan=plan, number__in=range(2, 12)).update(state="succeeded")  # 12 may launch
    client.force_login(operator)
    response = client.get(_url("launch", plan, 12))
    assert 'name="confirm_environment"' in response.content.decode()


def test_launch_without_permission_is_a_refusal_page(client, plan):
    clerk = make_user("clerk", permissions=("view_releaseplan",))
    client.force_login(clerk)
    response = client.post(_url("launch", plan, 2))
    assert response.status_code == 403
    assert "clerk may not launch steps: ask a release manager" in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=2).state == "pending"


def test_finalize_with_a_malformed_sha_names_it_and_keeps_the_input(client, operator, plan):
    _mark_done(plan, 2, 3, 4, 5, 6)
    client.force_login(operator)
    response = client.post(_url("finalize", plan), {"tag": "2.8.5", "commit": "not-a-sha"}, follow=True)
    html = response.content.decode()
    assert "&#x27;not-a-sha&#x27;" in html.split('id="finalize-form"')[1].split("</form>")[0]
    assert 'name="commit" required size="40" maxlength="40" value="not-a-sha"' in html
    plan.refresh_from_db()
    assert plan.final_commit == ""


def test_skip_without_reason_is_refused_next_to_its_form(client, operator, plan):
    client.force_login(operator)
    response = client.post(_url("skip", plan, 2), {"reason": "  "}, follow=True)
    assert response.context["form_error"]["form"] == "skip"
    assert '<p class="errornote">a skip needs a reason</p>' in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=2).state == "pending"


def test_pause_with_nothing_running_is_an_error_not_a_500(client, operator, plan):
    client.force_login(operator)
    response = client.post(_url("pause", plan))
    assert response.status_code == 302
    ((level, text),) = _messages(response)
    assert level == "error" and "no running step to pause" in text


def test_controls_are_post_only(client, operator, plan):
    client.force_login(operator)
    assert client.get(_url("pause", plan)).status_code == 405
    assert client.get(_url("retry", plan, 2)).status_code == 405


def test_audit_events_cannot_be_added_in_the_admin(admin_client):
    assert admin_client.get(reverse("admin:releases_auditevent_add")).status_code == 403


def test_stage_launch_continues_the_stage(client, operator, plan, simulator):
    configure_environments({"DEV": simulator("dev", password="dev-secret-Zq7")})
    client.force_login(operator)
    confirm_launch(client, plan, 2, stage=True)
    step = StepRun.objects.get(plan=plan, number=2)
    assert (step.state, step.continue_stage) == ("running", True)
