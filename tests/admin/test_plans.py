"""Creating a release in the admin, the plan list, the branded site and the plan page."""

import pytest
from django.urls import reverse

from releases.models import AuditEvent, ReleasePlan, StepRun
from tests.admin_helpers import mark_done, url
from tests.support import R, make_user

# Nothing is enqueued: `send_task` is replaced for every test (`sent_tasks`), so tests count it.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]
ADD = "/admin/releases/releaseplan/add/"


def _form(**overrides):
    data = {"version": "2.8.5", "release_commit": R, "branch": "", "git_url": "", "profile": "express"}
    data.update(overrides)
    return data


def test_creating_a_release_goes_through_the_service_and_opens_its_page(client, operator):
    client.force_login(operator)
    response = client.post(ADD, _form(branch="release/2.8.5-rc"))
    plan = ReleasePlan.objects.get(version="2.8.5")
    assert response.status_code == 302 and response.url == url("change", plan)
    assert plan.release_branch == "release/2.8.5-rc" and plan.created_by_username == operator.username
    assert StepRun.objects.get(plan=plan, number=1).state == "succeeded"  # as `release create` records it
    assert (
        AuditEvent.objects.filter(action="create_plan", outcome="ok", username=operator.username).count() == 1
    )


def test_the_add_page_has_the_contract_field_names(client, operator):
    client.force_login(operator)
    html = client.get(ADD).content.decode()
    for name in ("version", "release_commit", "branch", "git_url", "profile"):
        assert f'name="{name}"' in html


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"version": "two"}, "version", "must look like 2.8.5"),
        ({"release_commit": "abc123"}, "release_commit", "40-character"),
        ({"git_url": "https://example.com/express"}, "git_url", "must contain .git"),
    ],
)
def test_an_invalid_release_is_refused_on_its_field_with_the_input_kept(
    client, operator, overrides, field, text
):
    client.force_login(operator)
    response = client.post(ADD, _form(**overrides))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert text in " ".join(form.errors[field])
    (value,) = overrides.values()
    assert f'value="{value}"' in response.content.decode()
    assert not ReleasePlan.objects.exists()
    assert AuditEvent.objects.filter(action="create_plan", outcome="refused").count() == 1


def test_a_duplicate_version_is_refused_on_the_version_field(client, operator, plan):
    client.force_login(operator)
    response = client.post(ADD, _form())
    assert "release 2.8.5 already exists" in response.context["adminform"].form.errors["version"][0]
    assert ReleasePlan.objects.count() == 1


def test_a_user_without_add_permission_cannot_create(client, plan, viewer):
    client.force_login(viewer)
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, _form(version="2.8.6")).status_code == 403
    assert not ReleasePlan.objects.filter(version="2.8.6").exists()


def test_the_plan_list_shows_state_current_step_and_progress_per_environment(client, operator, plan_at):
    plan = plan_at(4)
    StepRun.objects.filter(plan=plan, number=4).update(state="running")
    client.force_login(operator)
    html = client.get(reverse("admin:releases_releaseplan_changelist")).content.decode()
    assert "rp-state-running" in html
    assert "4. " in html and "(running)" in html
    assert "DEV 2/4 · TEST 0/5 · PROD 0/3" in html


def test_the_site_is_branded_and_view_site_goes_to_the_plan_list(client, admin_client, operator):
    client.force_login(operator)
    html = client.get(reverse("admin:index")).content.decode()
    assert "Express Release Portal" in html and "Django administration" not in html
    assert f'href="{reverse("admin:releases_releaseplan_changelist")}">View site' in html.replace("\n", "")
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert (
        index.index("Release plans")
        < index.index("Environments")
        < index.index("Authentication and Authorization")
    )


def test_plan_page_has_the_pipeline_and_every_step_with_bounded_queries(
    client, operator, plan, django_assert_max_num_queries
):
    client.force_login(operator)
    with django_assert_max_num_queries(20):
        response = client.get(url("change", plan))
    html = response.content.decode()
    for name in ("DEV", "TEST", "PROD"):
        assert f'data-environment="{name}"' in html
    for number in range(1, 15):
        assert f'data-step="{number}"' in html
    assert 'data-step="2" data-state="pending"' in html
    assert "releases/live.js" in html and 'data-live-url="' + url("live", plan) in html


def test_a_running_row_is_never_offered_a_launch(client, operator, plan):
    StepRun.objects.filter(plan=plan, number=2).update(state="running")
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    row = html.split('id="step-2"')[1].split('id="step-3"')[0]
    assert "Launch" not in row
    assert 'value="Pause"' in row and "Abort…" in row


def test_launch_stage_is_offered_only_on_the_environments_next_step(client, operator, plan):
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    assert html.split('id="release-steps"')[1].count("Launch stage DEV") == 1  # the rows
    assert "Launch stage DEV" in html.split("data-next>")[1].split("</span>")[0]  # and the next action
    row = html.split('id="step-2"')[1].split('id="step-3"')[0]
    assert ">Preview</a>" in row and ">Launch step 2</a>" in row
    assert url("launch", plan, 2, query="?stage=1") in html
    assert url("launch", plan, 3, query="?stage=1") not in html


def test_finalize_is_offered_only_while_allowed(client, operator, plan):
    client.force_login(operator)
    assert 'value="Finalize"' not in client.get(url("change", plan)).content.decode()  # steps 2-6 pending
    mark_done(plan, 2, 3, 4, 5, 6)
    assert 'value="Finalize"' in client.get(url("change", plan)).content.decode()
    StepRun.objects.filter(plan=plan, number=8).update(state="succeeded")  # the final commit was used
    assert 'value="Finalize"' not in client.get(url("change", plan)).content.decode()


def test_the_live_fragment_reports_the_current_states(client, operator, plan):
    client.force_login(operator)
    StepRun.objects.filter(plan=plan, number=2).update(state="running", activity="writing batch 3 of 10")
    html = client.get(url("live", plan)).content.decode()
    assert 'data-step="2" data-state="running"' in html
    assert "writing batch 3 of 10" in html
    assert "<html" not in html  # a fragment, not a page


def test_abort_asks_for_confirmation_then_aborts(client, operator, plan_at):
    plan = plan_at(3)
    StepRun.objects.filter(plan=plan, number=3).update(state="paused")
    client.force_login(operator)
    page = client.get(url("abort", plan))
    assert page.status_code == 200 and 'value="Yes, abort step 3"' in page.content.decode()
    assert StepRun.objects.get(plan=plan, number=3).state == "paused"  # GET aborts nothing
    client.post(url("abort", plan))
    assert StepRun.objects.get(plan=plan, number=3).state == "aborted"
    assert AuditEvent.objects.filter(action="abort", outcome="ok").count() == 1


def test_secrets_are_never_rendered(client, operator, plan, monkeypatch):
    client.force_login(operator)
    html = (
        client.get(url("change", plan)).content.decode() + client.get(url("step", plan, 3)).content.decode()
    )
    assert "dev-secret-Zq7" not in html and "prod-secret-Zq7" not in html


def test_fragments_and_step_pages_need_the_view_permission(client, plan):
    stranger = make_user("stranger", permissions=())
    client.force_login(stranger)
    for name, args in (("live", ()), ("step", (3,)), ("step_live", (3,))):
        assert client.get(url(name, plan, *args)).status_code == 403


def test_plan_page_lists_all_steps_with_bounded_queries(
    client, operator, plan, django_assert_max_num_queries
):
    client.force_login(operator)
    with django_assert_max_num_queries(15):
        response = client.get(url("change", plan))
    assert response.status_code == 200
    html = response.content.decode()
    for number in range(1, 15):
        assert f'id="step-{number}"' in html
    assert url("launch", plan, 2) in html  # step 2 is pending and launchable


def test_plan_page_hides_launch_buttons_without_permission(client, plan, viewer):
    client.force_login(viewer)
    response = client.get(url("change", plan))
    assert response.status_code == 200
    assert 'id="step-2"' in response.content.decode()
    assert url("launch", plan, 2) not in response.content.decode()
