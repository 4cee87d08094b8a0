"""Every plan-page control that succeeds goes through its service: pause, resume, retry failed,
skip, finalize, withdraw. (Launching is in test_launching.py.)"""

from io import StringIO

import pytest
from django.core.management import call_command

from releases import services
from releases.models import AuditEvent, SiteResult, StepRun
from tests.admin_helpers import messages_of, url
from tests.support import R, T

# Nothing is enqueued: `send_task` is replaced for every test (`sent_tasks`), so tests count it.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]


@pytest.fixture(autouse=True)
def _logged_in(client, operator):
    client.force_login(operator)


def _audited(action):
    return AuditEvent.objects.filter(action=action, outcome="ok", username="prod-manager").count()


def test_pause_asks_the_running_step_to_stop(client, plan):
    StepRun.objects.filter(plan=plan, number=2).update(state="running")
    response = client.post(url("pause", plan))
    ((level, text),) = messages_of(response)
    assert (level, text.split(" Next: ")[0]) == (
        "success", "Pause requested for step 2 (Deploy the branch to DEV as the current profile)."
    )  # fmt: skip
    assert "Next: wait for step 2" in text  # every success message ends with the next action
    assert StepRun.objects.get(plan=plan, number=2).requested == "pause" and _audited("pause") == 1


def test_resume_sends_the_paused_step_back_to_a_worker(client, plan_at, sent_tasks):
    plan = plan_at(3)
    StepRun.objects.filter(plan=plan, number=3).update(state="paused")
    client.post(url("resume", plan))
    assert StepRun.objects.get(plan=plan, number=3).state == "running"
    assert sent_tasks.call_count == 1 and _audited("resume") == 1


def test_retry_failed_puts_the_failed_sites_back_to_pending(client, plan_at, sent_tasks):
    plan = plan_at(3)
    step = StepRun.objects.get(plan=plan, number=3)
    StepRun.objects.filter(pk=step.pk).update(state="paused")
    SiteResult.objects.create(step=step, site_id="f" * 24, path="broken", state="failed", message="500")
    page = client.get(url("change", plan)).content.decode()
    assert 'value="Retry failed (1)"' in page
    client.post(url("retry", plan, 3))
    assert StepRun.objects.get(pk=step.pk).state == "running"
    assert SiteResult.objects.get(step=step).state == "pending"
    assert sent_tasks.call_count == 1 and _audited("retry_failed") == 1


def test_skip_with_a_reason_records_it(client, plan):
    client.post(url("skip", plan, 2), {"reason": "deployed by hand"})
    step = StepRun.objects.get(plan=plan, number=2)
    assert (step.state, step.message) == ("skipped", "deployed by hand")
    assert AuditEvent.objects.get(action="skip", outcome="ok").reason == "deployed by hand"


def test_finalize_records_the_tag_and_commit(client, plan_at):
    plan = plan_at(7)
    client.post(url("finalize", plan), {"tag": "2.8.5", "commit": T})
    plan.refresh_from_db()
    assert (plan.final_tag, plan.final_commit) == ("2.8.5", T)
    assert StepRun.objects.get(plan=plan, number=7).state == "succeeded" and _audited("finalize") == 1


def test_the_requester_withdraws_a_launch_waiting_for_approval(client, operator, plan):
    call_command("environment", "set", "DEV", "--two-person", "--user", operator.username, stdout=StringIO())
    services.launch(services.get_step(plan, 2), operator)
    assert 'value="Withdraw request"' in client.get(url("change", plan)).content.decode()
    client.post(url("withdraw", plan, 2))
    assert not plan.steps.get(number=2).launch_requests.filter(state="pending").exists()
    assert _audited("withdraw") == 1 and _audited("launch_request") == 1


@pytest.mark.parametrize(
    ("name", "args", "data", "action"),
    [
        ("pause", (), {}, "pause"),
        ("resume", (), {}, "resume"),
        ("abort", (), {}, "abort"),
        ("retry", (3,), {}, "retry_failed"),
        ("skip", (3,), {"reason": "because"}, "skip"),
        ("finalize", (), {"tag": "2.8.5", "commit": T}, "finalize"),
    ],
)
def test_a_viewer_is_refused_every_control_and_the_refusal_is_audited(
    client, plan_at, viewer, name, args, data, action
):
    plan = plan_at(3)
    StepRun.objects.filter(plan=plan, number=3).update(state="paused")
    client.force_login(viewer)
    before = dict(plan.steps.values_list("number", "state"))
    client.post(url(name, plan, *args), data)
    assert dict(plan.steps.values_list("number", "state")) == before
    refused = AuditEvent.objects.get(action=action, outcome="refused")
    assert refused.username == "viewer" and "may not" in refused.message
    assert refused.message.endswith(": ask a release manager")  # the role to ask, not a codename


def test_the_plan_list_answers_in_bounded_queries(client, operator, django_assert_max_num_queries):
    for n in range(8):
        services.create_plan(f"2.8.{n}", commit=R, user=operator)
    with django_assert_max_num_queries(12):
        response = client.get("/admin/releases/releaseplan/")
    assert response.content.decode().count("DEV 0/4 · TEST 0/5 · PROD 0/3") == 8


def test_finalize_with_a_malformed_sha_names_it_and_keeps_the_input(client, plan_at):
    plan = plan_at(7)
    response = client.post(url("finalize", plan), {"tag": "2.8.5", "commit": "not-a-sha"}, follow=True)
    html = response.content.decode()
    assert "&#x27;not-a-sha&#x27;" in html.split('id="finalize-form"')[1].split("</form>")[0]
    assert 'name="commit" required size="40" maxlength="40" value="not-a-sha"' in html
    plan.refresh_from_db()
    assert plan.final_commit == ""


def test_skip_without_reason_is_refused_next_to_its_form(client, plan):
    response = client.post(url("skip", plan, 2), {"reason": "  "}, follow=True)
    assert response.context["form_error"]["form"] == "skip"
    assert '<p class="errornote">a skip needs a reason</p>' in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=2).state == "pending"


def test_pause_with_nothing_running_is_an_error_not_a_500(client, plan):
    response = client.post(url("pause", plan))
    assert response.status_code == 302
    ((level, text),) = messages_of(response)
    assert level == "error" and "no running step to pause" in text


def test_controls_are_post_only(client, plan):
    assert client.get(url("pause", plan)).status_code == 405
    assert client.get(url("retry", plan, 2)).status_code == 405
