"""Issue 21 §6: the accounts `make run` creates, the README's role table and what each account may
do agree; refusals name the role to ask; a form reports every problem at once with what was typed;
an approver sees that a request waits (plan list, plan page, Slack)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from releases import roles, services
from releases.management.commands import runportal
from releases.models import Environment, LaunchRequest, ReleasePlan
from tests.support import R, make_user
from tests.test_notify import webhook  # noqa: F401  (a local Slack webhook that records posts)

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
PASSWORD = "demo"


def _role_table() -> dict[str, tuple[str, str]]:
    """The README's "Who can do what" table: account -> (role column, can column)."""
    section = README.split("### Who can do what\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for account in re.findall(r"`([^`]+)`", cells[0]):
                rows[account] = (cells[1], cells[2])
    return rows


@pytest.fixture
def accounts(db, monkeypatch):
    monkeypatch.delenv("PORTAL_DEMO_PASSWORD", raising=False)
    call_command("loadrunbook", verbosity=0)
    runportal.Command()._ensure_accounts()
    return {u.username: u for u in get_user_model().objects.all()}


# -- the accounts, the README and the Ready banner -------------------------------------------------


def test_the_readme_role_table_lists_every_demo_account_with_its_role_and_rights():
    table = _role_table()

    assert set(table) == {name for name, _ in roles.DEMO_ACCOUNTS}
    for name, role in roles.DEMO_ACCOUNTS:
        role_cell, can = table[name]
        assert role_cell.startswith(roles.ROLE_NAMES[role]), (name, role_cell)
        if role != roles.SUPERUSER:
            assert f"(`{role}`)" in role_cell  # the group's name, as the admin shows it
        assert can == roles.DESCRIPTIONS[role], name


def test_the_readme_and_the_ready_banner_name_every_account_and_one_password(monkeypatch):
    monkeypatch.delenv("PORTAL_DEMO_PASSWORD", raising=False)
    first = README.split("## The two commands\n", 1)[1].split("\n## ", 1)[0]
    banner = "\n".join(runportal.ready_banner("127.0.0.1:8000", "embedded"))

    for name, role in roles.DEMO_ACCOUNTS:
        assert f"`{name}`" in first
        (line,) = [line for line in banner.splitlines() if line.split()[:1] == [name]]
        assert roles.ROLE_NAMES[role] in line
    assert f"password `{PASSWORD}`" in first and f"password '{PASSWORD}'" in banner
    assert not re.search(r"password `(?!demo`)", README)  # no second password anywhere
    assert "ops-lead" not in README and "auditor" not in README


def test_each_demo_account_has_exactly_its_roles_rights(accounts):
    admin, viewer = accounts["admin"], accounts["viewer"]
    manager, prod, approver = accounts["release-manager"], accounts["prod-manager"], accounts["prod-approver"]
    assert admin.is_superuser and not any(u.is_superuser for u in (viewer, manager, prod, approver))
    assert all(accounts[name].check_password(PASSWORD) for name, _ in roles.DEMO_ACCOUNTS)
    assert not viewer.has_perm("releases.launch_step") and viewer.has_perm("releases.view_launchrequest")
    assert manager.has_perms(
        ["releases.launch_step", "releases.finalize_release", "releases.add_releaseplan"]
    )
    assert not manager.has_perm("releases.launch_protected") and not manager.has_perm(
        "releases.change_environment"
    )
    for user in (prod, approver):
        assert user.has_perms(["releases.launch_protected", "releases.change_environment"])


@pytest.mark.parametrize("page", ["launchrequest", "auditevent", "releaseplan", "steprun", "environment"])
def test_every_demo_account_may_read_every_record_page(client, accounts, page):
    for name, _ in roles.DEMO_ACCOUNTS:
        client.force_login(accounts[name])
        response = client.get(reverse(f"admin:releases_{page}_changelist"))
        assert response.status_code == 200, (name, page, response.status_code)


def test_release_manager_may_launch_dev_but_is_told_to_ask_a_prod_release_manager_for_prod(accounts):
    plan = services.create_plan("2.8.5", commit=R, user=accounts["release-manager"])
    manager = accounts["release-manager"]

    assert services.permission_refusal(manager, "launch", plan.steps.get(number=2).environment) == ""
    refusal = services.permission_refusal(manager, "launch", Environment.objects.get(name="PROD"))
    assert (
        refusal
        == "release-manager may not launch steps on the protected environment PROD: ask a PROD release manager"
    )


# -- refusals name the role to ask -----------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(services.PERMISSIONS))
def test_a_refusal_names_the_role_to_ask_never_a_permission_codename(accounts, action):
    prod = Environment.objects.get(name="PROD")

    refusal = services.permission_refusal(accounts["viewer"], action, prod)

    assert refusal.startswith("viewer may not ")
    assert re.search(r": ask a (release manager|PROD release manager)$", refusal), refusal
    assert "releases." not in refusal and "permission" not in refusal


def test_the_refusal_page_names_the_role(client, accounts):
    plan = services.create_plan("2.8.5", commit=R, user=accounts["release-manager"])
    client.force_login(accounts["release-manager"])

    response = client.get(reverse("admin:releases_releaseplan_launch", args=[plan.pk, 12]))

    assert response.status_code == 403
    html = response.content.decode()
    assert "ask a PROD release manager" in html and "releases.launch_protected" not in html


def test_environment_and_update_group_refusals_name_the_role(accounts):
    prod = Environment.objects.get(name="PROD")
    manager = accounts["release-manager"]

    assert services.environment_change_refusal(manager, prod, {"parallelism": 2}).endswith(
        ": ask a PROD release manager"
    )
    assert services.update_group_refusal(manager, [prod], "change") == (
        "release-manager may not change update groups of the protected environment PROD: "
        "ask a PROD release manager"
    )


# -- a form reports every problem at once, with what was typed -------------------------------------


def test_the_new_plan_form_reports_every_problem_at_once_and_what_was_typed(client, accounts):
    client.force_login(accounts["release-manager"])
    data = {
        "version": "two",
        "release_commit": "a" * 39,
        "branch": "",
        "git_url": "https://x/y",
        "profile": "",
    }

    response = client.post(reverse("admin:releases_releaseplan_add"), data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "version 'two' must look like 2.8.5" in errors["version"][0]
    assert "(39 characters)" in errors["release_commit"][0]
    assert "must contain .git" in errors["git_url"][0]
    assert not ReleasePlan.objects.exists()


def test_an_empty_new_plan_form_names_both_missing_fields(client, accounts):
    client.force_login(accounts["release-manager"])
    response = client.post(reverse("admin:releases_releaseplan_add"), {"version": "", "release_commit": ""})
    errors = response.context["adminform"].form.errors
    assert errors["version"] == ["the version is empty"]
    assert errors["release_commit"] == ["the release commit is empty"]


def test_finalize_says_what_was_typed(accounts):
    plan = services.create_plan("2.8.5", commit=R, user=accounts["release-manager"])
    with pytest.raises(services.ActionRefused) as refused:
        services.finalize(plan, tag="2.8.5", commit="C" * 40, user=accounts["release-manager"])
    assert "(40 characters, upper case)" in str(refused.value)
    assert "; step 2 (Deploy the branch to DEV as the current profile) is pending" in str(
        refused.value
    )  # and the rest


# -- an approver sees that a request waits ---------------------------------------------------------


@pytest.fixture
def waiting(accounts):
    """A PROD launch requested by prod-manager under the two-person rule."""
    Environment.objects.filter(name="PROD").update(two_person=True)
    plan = services.create_plan("2.8.5", commit=R, user=accounts["prod-manager"])
    step = plan.steps.select_related("environment").get(number=12)
    LaunchRequest.objects.create(
        step=step, requested_by=accounts["prod-manager"], requested_by_username="prod-manager"
    )
    return plan


def test_the_plan_list_shows_a_badge_for_a_request_waiting_for_approval(client, accounts, waiting):
    client.force_login(accounts["prod-approver"])
    html = client.get(reverse("admin:releases_releaseplan_changelist")).content.decode()
    assert 'data-waiting="1"' in html and "a request waiting for approval" in html


def test_the_plan_page_shows_the_request_and_offers_the_approver_to_approve_it(client, accounts, waiting):
    client.force_login(accounts["prod-approver"])
    html = client.get(reverse("admin:releases_releaseplan_change", args=[waiting.pk])).content.decode()
    assert "waiting for approval" in html and "by prod-manager" in html
    assert "Approve launch" in html


def test_slack_says_a_request_waits(accounts, webhook, monkeypatch):  # noqa: F811
    url, received = webhook
    monkeypatch.setenv("ATLAS_PROD_SLACK_WEBHOOK", url)
    Environment.objects.filter(name="PROD").update(
        two_person=True, slack_webhook_env="ATLAS_PROD_SLACK_WEBHOOK"
    )
    plan = services.create_plan("2.8.5", commit=R, user=accounts["prod-manager"])
    plan.steps.filter(number__lt=12).update(state="succeeded")
    step = plan.steps.select_related("environment").get(number=12)

    services.request_action(step, accounts["prod-manager"], "launch")

    (message,) = received
    assert (
        "requested by prod-manager" in message["text"]
        and "waiting for another PROD release manager" in (message["text"])
    )


def test_the_plan_list_has_no_badge_without_a_waiting_request(client, accounts):
    services.create_plan("2.8.5", commit=R, user=accounts["release-manager"])
    client.force_login(make_user("reader", permissions=("view_releaseplan",)))
    html = client.get(reverse("admin:releases_releaseplan_changelist")).content.decode()
    assert "2.8.5" in html and "data-waiting" not in html
