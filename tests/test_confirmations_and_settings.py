"""Protections that hold against the person they stop (commit 0491d88), each judged from the
database, the audit trail and, where Atlas is concerned, the simulator's own log:

1. weakening a two-person environment is reserved to superusers (command and admin page);
2. a launch confirmation belongs to the one launch it was shown for (plan, step, stage, user);
3. a batch present at launch but missing from the confirmation pauses before its first write;
4. re-finalize is refused once a write of steps 8–14 may have reached Atlas, whatever its state.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Max
from django.urls import reverse
from django.utils import timezone

from releases import reports, services
from releases.models import AuditEvent, Environment, SiteResult, StepRun, UpdateGroup
from releases.states import StepState
from tests.admin_helpers import confirm_launch, mark_done, url
from tests.support import R, T, configure_environments, make_user, member, run_engine, tasks_not_sent
from tests.test_engine_faults import client_updates, start_prod
from tests.test_engine_safety import reach, removals, site_writes


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def prod_row() -> dict:
    return Environment.objects.filter(name="PROD").values().get()


def set_prod(*options: str, user: str) -> str:
    out = StringIO()
    call_command("environment", "set", "PROD", *options, "--user", user, stdout=out)
    return out.getvalue()


def environment_events(outcome: str, username: str) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(
            action="environment_set", environment_name="PROD", outcome=outcome, username=username
        ).order_by("id")
    )


# -- 1. weakening a two-person environment is reserved to superusers -----------------------------


@pytest.fixture
def alice(db):
    """A PROD release manager (not a superuser) who turned the two-person rule on for PROD,
    whose parallelism is 4 and failure threshold 5 sites."""
    configure_environments({})
    Environment.objects.filter(name="PROD").update(
        parallelism=4, failure_threshold_count=5, failure_threshold_percent=None
    )
    user = member("alice")
    set_prod("--two-person", user="alice")
    row = prod_row()
    assert (row["two_person"], row["protected"], row["verify_tls"]) == (True, True, True)
    assert not user.is_superuser
    return user


WEAKENINGS = {
    "two-person off": ["--no-two-person"],
    "unprotected": ["--no-protected"],
    "TLS unverified": ["--no-verify-tls"],
    "more parallel writes": ["--parallelism", "5"],
    "a higher count threshold": ["--failure-threshold", "6"],
    "no threshold": ["--failure-threshold", "none"],
    "a count switched to a percentage": ["--failure-threshold", "1%"],
}


@pytest.mark.django_db
@pytest.mark.parametrize("options", WEAKENINGS.values(), ids=WEAKENINGS.keys())
def test_a_prod_manager_cannot_weaken_a_two_person_environment(alice, options):
    before = prod_row()

    with pytest.raises(CommandError, match="reserved to superusers"):
        set_prod(*options, user="alice")

    assert prod_row() == before, "nothing is saved"
    (refusal,) = environment_events("refused", "alice")
    assert "PROD requires two people" in refusal.message and "alice is not one" in refusal.message
    assert len(environment_events("ok", "alice")) == 1  # only the fixture's two-person on


@pytest.mark.django_db
def test_a_prod_manager_may_still_strengthen_a_two_person_environment(alice):
    set_prod("--parallelism", "2", "--failure-threshold", "3", user="alice")

    row = prod_row()
    assert (row["parallelism"], row["failure_threshold_count"], row["two_person"]) == (2, 3, True)
    assert environment_events("refused", "alice") == []
    event = environment_events("ok", "alice")[-1]
    assert event.parameters == {"parallelism": [4, 2], "failure_threshold_count": [5, 3]}


@pytest.mark.django_db
def test_a_superuser_may_weaken_a_two_person_environment_audited(alice):
    get_user_model().objects.create_superuser("root", password="pw")

    set_prod(
        "--no-two-person", "--parallelism", "8", "--failure-threshold", "10%", "--no-verify-tls", user="root"
    )

    row = prod_row()
    assert (row["two_person"], row["verify_tls"], row["parallelism"]) == (False, False, 8)
    assert (row["failure_threshold_count"], row["failure_threshold_percent"]) == (None, 10.0)
    (event,) = environment_events("ok", "root")
    assert event.parameters["two_person"] == [True, False]
    assert event.parameters["parallelism"] == [4, 8]
    assert environment_events("refused", "root") == []


@pytest.mark.django_db
def test_the_environment_page_refuses_a_prod_manager_unticking_two_person(client, alice):
    from releases.admin.environments import EnvironmentForm

    env = Environment.objects.get(name="PROD")
    form_class = type(
        "F",
        (EnvironmentForm,),
        {"user": alice, "Meta": type("Meta", (), {"model": Environment, "fields": "__all__"})},
    )
    data = {
        **{f: v for f, v in form_class(instance=env).initial.items() if v is not None},
        "two_person": False,
    }
    before = prod_row()
    client.force_login(alice)

    response = client.post(reverse("admin:releases_environment_change", args=[env.pk]), data)

    assert response.status_code == 200  # the form again, with the refusal
    assert "reserved to superusers" in response.content.decode()
    assert prod_row() == before and Environment.objects.get(name="PROD").two_person
    (refusal,) = environment_events("refused", "alice")
    assert "reserved to superusers" in refusal.message and refusal.message.endswith("(via admin)")


# -- 2. a confirmation belongs to one launch -------------------------------------------------------


@pytest.fixture
def launch_plan(db, simulator, sent_tasks):
    """DEV and PROD on simulators (PROD protected, two-person off), a plan, and two operators."""
    configure_environments(
        {
            "DEV": simulator("dev", password="dev-secret-Zq7"),
            "PROD": simulator("prod", password="prod-secret-Zq7", sites=120),
        }
    )
    assert not Environment.objects.get(name="PROD").two_person
    operator = make_user("ops-lead")
    other = make_user("ops-second")
    return services.create_plan("2.8.5", commit=R, user=operator), operator, other


def assert_refused_as_another_launch(response, step: StepRun, sent_tasks, username: str) -> None:
    assert response.status_code == 200, "the confirmation page again, nothing launched"
    assert "another launch" in response.context["error"]
    step.refresh_from_db()
    assert (step.state, step.started_at, step.confirmed_targets) == ("pending", None, None)
    assert sent_tasks.call_count == 0
    (refusal,) = AuditEvent.objects.filter(action="launch", outcome="refused")
    assert refusal.username == username and refusal.step_id == step.pk
    assert "another launch" in refusal.message
    assert not AuditEvent.objects.filter(action="launch", outcome="ok").exists()


@pytest.mark.django_db
def test_a_dev_step_2_confirmation_posted_to_prod_step_14_is_refused(client, launch_plan, sent_tasks):
    plan, operator, _ = launch_plan
    client.force_login(operator)
    token = client.get(url("launch", plan, 2)).context["token"]
    mark_done(plan, *range(2, 14))  # step 14 is next

    response = client.post(url("launch", plan, 14), {"confirmed": token, "confirm_environment": "PROD"})

    assert_refused_as_another_launch(
        response, StepRun.objects.get(plan=plan, number=14), sent_tasks, "ops-lead"
    )


@pytest.mark.django_db
def test_a_stage_confirmation_posted_as_a_single_step_launch_is_refused(client, launch_plan, sent_tasks):
    plan, operator, _ = launch_plan
    client.force_login(operator)
    token = client.get(url("launch", plan, 2, query="?stage=1")).context["token"]

    response = client.post(url("launch", plan, 2), {"confirmed": token})  # no stage=1

    assert_refused_as_another_launch(
        response, StepRun.objects.get(plan=plan, number=2), sent_tasks, "ops-lead"
    )
    assert not StepRun.objects.filter(plan=plan, confirmed_targets__isnull=False).exists()


@pytest.mark.django_db
def test_a_confirmation_shown_to_one_user_and_posted_by_another_is_refused(client, launch_plan, sent_tasks):
    plan, operator, other = launch_plan
    client.force_login(operator)
    token = client.get(url("launch", plan, 2)).context["token"]

    client.force_login(other)
    response = client.post(url("launch", plan, 2), {"confirmed": token})

    assert_refused_as_another_launch(
        response, StepRun.objects.get(plan=plan, number=2), sent_tasks, "ops-second"
    )


@pytest.mark.django_db
def test_the_confirmation_shown_for_this_launch_still_launches_it(client, launch_plan, sent_tasks):
    plan, operator, _ = launch_plan
    mark_done(plan, *range(2, 14))
    client.force_login(operator)

    page, response = confirm_launch(client, plan, 14, typed="PROD")

    assert response.status_code == 302
    step = StepRun.objects.get(plan=plan, number=14)
    assert step.state == "running" and sent_tasks.call_count == 1
    assert step.confirmed_targets == page.context["radius"]["confirmed"][14]
    assert not AuditEvent.objects.filter(action="launch", outcome="refused").exists()
    assert AuditEvent.objects.get(action="launch", outcome="ok").username == "ops-lead"


# -- 3. a batch missing from the confirmation pauses before its first write -----------------------


@pytest.fixture
def prod_sim():
    server = start_prod(400)
    yield server
    server.stop()


MISSING = {
    "update-sites": (14, None, {"status": "installed", "update_group": 1}),
    "delete-sites": (
        13,
        {"status": "available", "update_group": 0},
        {"status": "available", "update_group": {"$in": [1, 2]}},
    ),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("number, first_where, late_where", MISSING.values(), ids=MISSING.keys())
def test_a_batch_missing_from_the_confirmation_pauses_before_its_first_write(
    prod_sim, number, first_where, late_where
):
    configure_environments({"PROD": prod_sim}, pool_wait_seconds=0)
    user = make_user()
    step = reach(services.create_plan("2.8.5", commit=R, user=user), user, number)
    groups = UpdateGroup.objects.filter(environment__name="PROD", step_number=number).order_by("position")
    first = groups.first()
    groups.exclude(pk=first.pk).update(enabled=False)  # one batch, shown and confirmed
    if first_where is not None:
        UpdateGroup.objects.filter(pk=first.pk).update(where=first_where)
    (preview,) = reports.preview(step.plan, number)
    confirmed = reports.confirmed_counts([preview])[number]
    assert list(confirmed) == [first.name] and confirmed[first.name] > 0
    # A group added after the operator confirmed: a second batch nobody saw.
    late = UpdateGroup.objects.create(
        environment=first.environment,
        step_number=number,
        name="added after the confirmation",
        where=late_where,
        position=groups.aggregate(Max("position"))["position__max"] + 1,
    )
    prod_sim.injector.record = True

    with tasks_not_sent():
        services.launch(step, user, confirmed={number: confirmed})
    assert run_engine(step) == StepState.PAUSED

    step.refresh_from_db()
    assert "added after the confirmation has" in step.message, step.message
    assert "not in the confirmation" in step.message
    rows = SiteResult.objects.filter(step=step)
    late_sites = set(rows.filter(batch_name=late.name).values_list("site_id", flat=True))
    first_sites = set(rows.filter(batch_name=first.name).values_list("site_id", flat=True))
    assert late_sites and first_sites and not late_sites & first_sites
    # Atlas's side: the confirmed batch was written, nothing of the unconfirmed one.
    written = {path.rsplit("/", 1)[1] for _, path, *_ in site_writes(list(prod_sim.injector.requests))}
    assert written and written <= first_sites, "a write went to a site outside the confirmed batch"
    assert not written & late_sites
    touched = client_updates(prod_sim) if number == 14 else [e["id"] for e in removals(prod_sim)]
    assert touched and not set(touched) & late_sites


# -- 4. re-finalize once a later step may have written ----------------------------------------------


@pytest.fixture
def finalized(db):
    configure_environments({})
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    for number in (2, 3, 4, 5, 6):
        services.skip(services.get_step(plan, number), user, "not needed by this test")
    services.finalize(plan, tag=plan.version, commit=T, user=user)
    return plan, user


OTHER = "c" * 40


def assert_refinalize_refused(plan, user, number: int) -> None:
    with pytest.raises(services.ActionRefused, match=rf"step {number} \(skipped\) has already run"):
        services.finalize(plan, tag="2.8.5-fixed", commit=OTHER, user=user)
    plan.refresh_from_db()
    assert (plan.final_tag, plan.final_commit) == ("2.8.5", T)
    refusal = AuditEvent.objects.filter(action="finalize", outcome="refused").get()
    assert f"step {number}" in refusal.message


@pytest.mark.django_db
def test_refinalize_is_refused_after_step_8_was_launched_then_skipped(finalized):
    plan, user = finalized
    step8 = services.get_step(plan, 8)
    with tasks_not_sent():
        services.launch(step8, user)
    # As the engine leaves it after a PATCH /code with no answer: paused until checked.
    StepRun.objects.filter(pk=step8.pk).update(
        state=StepState.PAUSED, message="the PATCH of the code item got no answer", lease_owner=""
    )
    services.skip(services.get_step(plan, 8), user, "checked by hand")
    step8.refresh_from_db()
    assert step8.state == StepState.SKIPPED and step8.started_at is not None

    assert_refinalize_refused(plan, user, 8)


@pytest.mark.django_db
@pytest.mark.parametrize("number", [8, 11, 12, 14])
def test_refinalize_is_refused_once_any_later_step_started_whatever_its_state(finalized, number):
    plan, user = finalized
    now = timezone.now()
    StepRun.objects.filter(plan=plan, number=number).update(
        state=StepState.SKIPPED, started_at=now, finished_at=now
    )

    assert_refinalize_refused(plan, user, number)


@pytest.mark.django_db
def test_a_step_8_skipped_without_ever_starting_does_not_block_refinalize(finalized):
    plan, user = finalized
    services.skip(services.get_step(plan, 8), user, "not needed")
    assert services.get_step(plan, 8).started_at is None

    services.finalize(plan, tag="2.8.5-fixed", commit=OTHER, user=user)

    plan.refresh_from_db()
    assert (plan.final_tag, plan.final_commit) == ("2.8.5-fixed", OTHER)
