"""`manage.py release` and `manage.py environment`: options, refusals, audit rows and JSON output.

No worker and no Atlas here: launches are checked up to "running, task enqueued on commit";
what a worker then does is covered by the end-to-end tests.
"""

import io
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from releases.cli import StepWaiter
from releases.models import AuditEvent, Environment, ReleasePlan, StepRun
from releases.states import StepState

SHA = "a" * 40
FINAL_SHA = "b" * 40
ALL_PERMISSIONS = (
    "add_releaseplan",
    "launch_step",
    "launch_protected",
    "finalize_release",
    "change_environment",
)

# No worker runs in these tests: launches hand nothing to the broker (`sent_tasks`); tests may count.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]


class Terminal(io.StringIO):
    """Operator input typed at a terminal."""

    def isatty(self) -> bool:
        return True


def run(*args, **options) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=options.pop("stderr", io.StringIO()), **options)
    return out.getvalue()


def make_user(username: str, *codenames: str, staff: bool = True) -> User:
    user = User.objects.create_user(username, is_staff=staff)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="releases", codename__in=codenames)
    )
    return user


def mark_done(plan_version: str, up_to: int) -> None:
    StepRun.objects.filter(plan__version=plan_version, number__lte=up_to).update(
        state=StepState.SUCCEEDED, finished_at=timezone.now()
    )


def step(number: int, version: str = "2.8.5") -> StepRun:
    return StepRun.objects.get(plan__version=version, number=number)


@pytest.fixture(autouse=True)
def runbook(monkeypatch):
    # Without a password, a preview answers "misconfigured" at once instead of calling Atlas.
    for name in ("DEV", "TEST", "PROD"):
        monkeypatch.delenv(f"ATLAS_{name}_PASSWORD", raising=False)
    call_command("loadrunbook", stdout=io.StringIO())


@pytest.fixture
def ops():
    return make_user("ops-lead", *ALL_PERMISSIONS)


@pytest.fixture
def plan(ops):
    run("release", "create", "2.8.5", "--commit", SHA, "--user", "ops-lead")
    return ReleasePlan.objects.get(version="2.8.5")


# -- create ------------------------------------------------------------------------------------------


def test_create_records_step_1_as_succeeded_with_the_branch(ops):
    run("release", "create", "2.8.5", "--commit", SHA, "--user", "ops-lead")

    first = step(1)
    assert (first.state, first.launched_by_username) == (StepState.SUCCEEDED, "ops-lead")
    assert first.message == f"branch release/2.8.5 at {SHA}"


def test_create_json_prints_the_new_plan_status(ops):
    out = run("release", "create", "2.8.5", "--commit", SHA, "--user", "ops-lead", "--json")

    document = json.loads(out)
    assert (document["version"], document["steps"][0]["state"]) == ("2.8.5", "succeeded")


def test_create_refuses_a_duplicate_version(plan):
    with pytest.raises(CommandError, match="release 2.8.5 already exists"):
        run("release", "create", "2.8.5", "--commit", SHA, "--user", "ops-lead")


def test_create_refuses_a_malformed_commit(ops):
    with pytest.raises(CommandError, match="40-character"):
        run("release", "create", "2.8.5", "--commit", "abc123", "--user", "ops-lead")
    assert not ReleasePlan.objects.exists()


def test_create_refuses_an_unknown_user():
    with pytest.raises(CommandError, match="unknown user 'nobody'"):
        run("release", "create", "2.8.5", "--commit", SHA, "--user", "nobody")
    assert AuditEvent.objects.filter(action="resolve_user", username="nobody", outcome="refused").exists()


def test_create_refuses_a_non_staff_user():
    make_user("visitor", *ALL_PERMISSIONS, staff=False)

    with pytest.raises(CommandError, match="active staff account"):
        run("release", "create", "2.8.5", "--commit", SHA, "--user", "visitor")


def test_create_refused_for_lack_of_permission_is_audited():
    make_user("reader")

    with pytest.raises(CommandError, match="reader may not create release plans: ask a release manager"):
        run("release", "create", "2.8.5", "--commit", SHA, "--user", "reader")
    event = AuditEvent.objects.get(action="create_plan", username="reader")
    assert event.outcome == AuditEvent.Outcome.REFUSED


def test_create_requires_user():
    with pytest.raises(CommandError, match="--user"):
        run("release", "create", "2.8.5", "--commit", SHA)


# -- status and list -------------------------------------------------------------------------------


def test_status_json_has_the_contract_keys(plan):
    document = json.loads(run("release", "status", "2.8.5", "--json"))

    assert {"version", "state", "steps", "sweeps"} <= document.keys()
    assert [s["number"] for s in document["steps"]] == list(range(1, 15))
    step_keys = {
        "number",
        "environment",
        "kind",
        "title",
        "state",
        "launched_by",
        "started_at",
        "finished_at",
    }
    assert all(step_keys | {"counts"} <= s.keys() for s in document["steps"])
    counts = document["steps"][1]["counts"]
    assert counts == {
        "targeted": 0,
        "succeeded": 0,
        "failed": 0,
        "skipped": 0,
        "pending": 0,
        "unverified": 0,
        "rolled_back": 0,
    }


def test_status_json_stdout_is_exactly_one_document(plan):
    out = run("release", "status", "2.8.5", "--json")

    document, end = json.JSONDecoder().raw_decode(out)
    assert out[end:].strip() == ""
    assert document["version"] == "2.8.5"


def test_status_text_lists_every_step(plan):
    out = run("release", "status", "2.8.5")

    assert "Release 2.8.5 (express): pending" in out
    assert "Update the sites on PROD in batches" in out


def test_status_of_an_unknown_version_is_refused(plan):
    with pytest.raises(CommandError, match="no release '9.9.9'"):
        run("release", "status", "9.9.9")


def test_list_json_shows_each_plan_and_its_state(plan):
    rows = json.loads(run("release", "list", "--json"))

    assert [(r["version"], r["state"]) for r in rows] == [("2.8.5", "pending")]


# -- preview -----------------------------------------------------------------------------------------


def test_preview_of_the_branch_step_needs_no_atlas(plan):
    previews = json.loads(run("release", "preview", "2.8.5", "--step", "1", "--json"))

    assert previews == [
        {
            "number": 1,
            "environment": None,
            "kind": "git_branch",
            "title": "Create the release branch",
            "state": "succeeded",
            "manual": True,
            "detail": f"branch release/2.8.5 at {SHA}",
        }
    ]


def test_preview_that_cannot_read_atlas_exits_non_zero_after_printing(plan):
    out = io.StringIO()
    with pytest.raises(CommandError, match=r"could not preview step\(s\) 2"):
        call_command("release", "preview", "2.8.5", "--step", "2", "--json", stdout=out)
    assert "ATLAS_DEV_PASSWORD is not set" in json.loads(out.getvalue())[0]["error"]


def test_preview_of_an_unknown_step_is_refused(plan):
    with pytest.raises(CommandError, match="has no step 15"):
        run("release", "preview", "2.8.5", "--step", "15")


# -- launch ------------------------------------------------------------------------------------------


def test_launch_marks_the_step_running_and_enqueues_it(plan, sent_tasks):
    run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", "--yes")

    launched = step(2)
    assert (launched.state, launched.launched_by_username) == (StepState.RUNNING, "ops-lead")
    assert len(launched.task_ids) == 1 and sent_tasks.call_count == 1
    assert sent_tasks.call_args.kwargs["task_id"] == launched.task_ids[0]


def test_launch_json_prints_the_launched_step(plan):
    out = run("release", "launch", "2.8.5", "--next", "--user", "ops-lead", "--yes", "--json")

    document = json.loads(out)
    assert (document["step"]["number"], document["step"]["state"]) == (2, "running")


def test_launch_stage_continues_with_the_environments_next_steps(plan):
    run("release", "launch", "2.8.5", "--stage", "dev", "--user", "ops-lead", "--yes")

    assert (step(2).state, step(2).continue_stage) == (StepState.RUNNING, True)


def test_launch_out_of_order_is_refused_naming_the_blocking_step(plan):
    with pytest.raises(CommandError, match=r"step 5 cannot start: step 2 \(.*\) is pending"):
        run("release", "launch", "2.8.5", "--step", "5", "--user", "ops-lead", "--yes")
    assert step(5).state == StepState.PENDING


def test_refused_launch_is_audited(plan):
    with pytest.raises(CommandError):
        run("release", "launch", "2.8.5", "--step", "5", "--user", "ops-lead", "--yes")

    event = AuditEvent.objects.get(action="launch")
    assert (event.outcome, event.step, event.username) == ("refused", step(5), "ops-lead")


def test_launch_of_the_finalize_gate_is_refused(plan):
    mark_done("2.8.5", 6)

    with pytest.raises(CommandError, match="step 7 is a manual gate"):
        run("release", "launch", "2.8.5", "--step", "7", "--user", "ops-lead", "--yes")


def test_launch_without_yes_is_refused_when_stdin_is_not_a_terminal(plan):
    with pytest.raises(CommandError, match="stdin is not a terminal"):
        run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", stdin=io.StringIO("y\n"))
    assert step(2).state == StepState.PENDING


def test_launch_declined_at_the_prompt_launches_nothing(plan):
    with pytest.raises(CommandError, match="not confirmed"):
        run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", stdin=Terminal("n\n"))
    assert step(2).state == StepState.PENDING


def test_launch_confirmed_at_the_prompt_runs_the_step(plan):
    err = io.StringIO()
    run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", stdin=Terminal("y\n"), stderr=err)

    assert step(2).state == StepState.RUNNING
    assert "Proceed? [y/N]" in err.getvalue()


def test_launch_prompt_shows_the_step_and_its_preview(plan):
    err = io.StringIO()
    with pytest.raises(CommandError):
        run(
            "release",
            "launch",
            "2.8.5",
            "--step",
            "2",
            "--user",
            "ops-lead",
            stdin=Terminal("\n"),
            stderr=err,
        )

    assert "Step 2 [DEV] Deploy the branch to DEV as the current profile" in err.getvalue()
    assert "could not preview" in err.getvalue()


def test_launch_on_protected_environment_is_not_confirmed_by_yes_at_the_prompt(plan):
    mark_done("2.8.5", 11)
    StepRun.objects.filter(plan=plan, number=7).update(state=StepState.SUCCEEDED)

    with pytest.raises(
        CommandError, match=r"type its name exactly to confirm \(you typed 'y'\)\. Nothing was launched"
    ):
        run("release", "launch", "2.8.5", "--step", "12", "--user", "ops-lead", stdin=Terminal("y\n"))
    assert step(12).state == StepState.PENDING


def test_launch_on_protected_environment_is_confirmed_by_typing_its_name(plan):
    mark_done("2.8.5", 11)
    err = io.StringIO()

    run(
        "release",
        "launch",
        "2.8.5",
        "--step",
        "12",
        "--user",
        "ops-lead",
        stdin=Terminal("PROD\n"),
        stderr=err,
    )

    assert step(12).state == StepState.RUNNING
    assert "Type PROD to proceed" in err.getvalue()


def test_launch_on_protected_environment_needs_the_protected_permission(plan):
    make_user("dev-ops", "launch_step")
    mark_done("2.8.5", 11)

    with pytest.raises(CommandError, match="ask a PROD release manager"):
        run("release", "launch", "2.8.5", "--step", "12", "--user", "dev-ops", "--yes")


def test_launch_of_a_running_step_is_refused_before_prompting(plan):
    run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", "--yes")
    err = io.StringIO()

    with pytest.raises(CommandError, match=r"step 2 is no longer launchable \(it is running\)"):
        run(
            "release",
            "launch",
            "2.8.5",
            "--step",
            "2",
            "--user",
            "ops-lead",
            stdin=Terminal("y\n"),
            stderr=err,
        )
    assert "Proceed?" not in err.getvalue()


def test_launch_blocked_is_refused_before_prompting(plan):
    err = io.StringIO()
    with pytest.raises(CommandError, match="step 5 cannot start"):
        run(
            "release",
            "launch",
            "2.8.5",
            "--step",
            "5",
            "--user",
            "ops-lead",
            stdin=Terminal("y\n"),
            stderr=err,
        )
    assert "Proceed?" not in err.getvalue()
    assert AuditEvent.objects.filter(action="launch", outcome="refused", step=step(5)).exists()


def test_launch_wait_without_a_worker_times_out_with_exit_code_3(plan):
    with pytest.raises(CommandError, match="timed out after 0.2s: step 2 is still running") as caught:
        run(
            "release",
            "launch",
            "2.8.5",
            "--step",
            "2",
            "--user",
            "ops-lead",
            "--yes",
            "--wait",
            "--timeout",
            "0.2",
        )
    assert caught.value.returncode == 3


# -- finalize, skip, pause -----------------------------------------------------------------------------


def test_finalize_refuses_a_malformed_commit(plan):
    mark_done("2.8.5", 6)

    with pytest.raises(CommandError, match="commit 'b123' must be a full 40-character"):
        run("release", "finalize", "2.8.5", "--tag", "2.8.5", "--commit", "b123", "--user", "ops-lead")


def test_finalize_refuses_before_steps_1_to_6_are_done(plan):
    with pytest.raises(CommandError, match=r"step 2 \(.*\) is pending"):
        run("release", "finalize", "2.8.5", "--tag", "2.8.5", "--commit", FINAL_SHA, "--user", "ops-lead")
    assert step(7).state == StepState.PENDING


def test_finalize_records_the_tag_and_commit(plan):
    mark_done("2.8.5", 6)

    run("release", "finalize", "2.8.5", "--tag", "2.8.5", "--commit", FINAL_SHA, "--user", "ops-lead")

    plan.refresh_from_db()
    assert (plan.final_tag, plan.final_commit, step(7).state) == ("2.8.5", FINAL_SHA, StepState.SUCCEEDED)


def test_skip_needs_a_reason(plan):
    with pytest.raises(CommandError, match="a skip needs a reason"):
        run("release", "skip", "2.8.5", "--step", "3", "--reason", "  ", "--user", "ops-lead")
    assert step(3).state == StepState.PENDING


def test_skip_records_the_reason(plan):
    run("release", "skip", "2.8.5", "--step", "3", "--reason", "pool already empty", "--user", "ops-lead")

    assert (step(3).state, step(3).message) == (StepState.SKIPPED, "pool already empty")


def test_pause_is_refused_when_no_step_is_running(plan):
    with pytest.raises(CommandError, match="has no running step to pause"):
        run("release", "pause", "2.8.5", "--user", "ops-lead")


def test_pause_requests_the_running_step_to_stop(plan):
    run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", "--yes")

    run("release", "pause", "2.8.5", "--user", "ops-lead")

    assert (step(2).state, step(2).requested) == (StepState.RUNNING, "pause")


# -- waiting (the engine's moves are played by the fake clock instead of a worker) ----------------------


class Script:
    """A clock whose every sleep plays the next scripted change to the database."""

    def __init__(self, *moves):
        self.moves, self.now = list(moves), 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.moves:
            self.moves.pop(0)()

    def clock(self) -> float:
        return self.now


def move(number: int, state: str, **fields):
    def apply():
        now = timezone.now()
        times = {"started_at": now} if state == StepState.RUNNING else {"finished_at": now}
        StepRun.objects.filter(plan__version="2.8.5", number=number).update(state=state, **times, **fields)

    return apply


def waiter(script: Script, lines: list) -> StepWaiter:
    return StepWaiter(report=lines.append, sleep=script.sleep, clock=script.clock, grace=3)


def test_wait_follows_a_stage_to_its_last_step(plan, ops):
    run("release", "launch", "2.8.5", "--stage", "DEV", "--user", "ops-lead", "--yes")
    script = Script(
        move(2, StepState.SUCCEEDED),
        move(3, StepState.RUNNING),
        move(3, StepState.SUCCEEDED),
        move(4, StepState.RUNNING),
        move(4, StepState.SUCCEEDED),
    )

    result = waiter(script, []).follow(step(2), stage=True)

    assert result.succeeded and [s.number for s in result.steps] == [2, 3, 4]


def test_wait_follows_a_stage_step_that_started_and_ended_between_two_polls(plan):
    run("release", "launch", "2.8.5", "--stage", "DEV", "--user", "ops-lead", "--yes")
    quick = [move(2, StepState.SUCCEEDED), move(3, StepState.RUNNING), move(3, StepState.SUCCEEDED)]
    script = Script(
        lambda: [apply() for apply in quick],
        move(4, StepState.RUNNING),
        move(4, StepState.SUCCEEDED),
    )

    result = waiter(script, []).follow(step(2), stage=True)

    assert result.succeeded and [s.number for s in result.steps] == [2, 3, 4]


def test_wait_ends_a_stage_whose_remaining_steps_were_skipped(plan):
    run("release", "skip", "2.8.5", "--step", "3", "--reason", "r", "--user", "ops-lead")
    run("release", "skip", "2.8.5", "--step", "4", "--reason", "r", "--user", "ops-lead")
    run("release", "launch", "2.8.5", "--stage", "DEV", "--user", "ops-lead", "--yes")
    script = Script(move(2, StepState.SUCCEEDED))

    result = waiter(script, []).follow(step(2), stage=True)

    assert result.succeeded and [s.number for s in result.steps] == [2]


def test_wait_stops_a_stage_at_a_skipped_step_that_the_engine_does_not_pass(plan):
    run("release", "skip", "2.8.5", "--step", "3", "--reason", "r", "--user", "ops-lead")
    run("release", "launch", "2.8.5", "--stage", "DEV", "--user", "ops-lead", "--yes")
    script = Script(move(2, StepState.SUCCEEDED))

    result = waiter(script, []).follow(step(2), stage=True)

    assert not result.succeeded and "step 4 was not launched" in result.message


def test_wait_reports_a_step_that_ends_failed(plan):
    run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", "--yes")
    script = Script(move(2, StepState.FAILED, message="Atlas error: 409"))

    result = waiter(script, []).follow(step(2), stage=False)

    assert not result.succeeded and result.message == "step 2 ended failed: Atlas error: 409"


def test_wait_stops_a_stage_whose_next_step_was_not_launched(plan):
    run("release", "launch", "2.8.5", "--stage", "DEV", "--user", "ops-lead", "--yes")
    script = Script(move(2, StepState.SUCCEEDED))

    result = waiter(script, []).follow(step(2), stage=True)

    assert not result.succeeded and "step 3 was not launched" in result.message


def test_wait_prints_progress_lines(plan):
    run("release", "launch", "2.8.5", "--step", "2", "--user", "ops-lead", "--yes")
    lines = []

    waiter(Script(move(2, StepState.SUCCEEDED)), lines).follow(step(2), stage=False)

    assert lines == ["step 2 [DEV] deploy_code: running", "step 2 [DEV] deploy_code: succeeded"]


# -- environment -------------------------------------------------------------------------------------


def test_environment_show_json_never_contains_the_password(monkeypatch):
    monkeypatch.setenv("ATLAS_DEV_PASSWORD", "s3cret-Zebra-42")

    out = run("environment", "show", "--json")

    assert "s3cret-Zebra-42" not in out
    dev = next(e for e in json.loads(out) if e["name"] == "DEV")
    assert (dev["password_env"], dev["password_set"]) == ("ATLAS_DEV_PASSWORD", True)


def test_environment_show_says_when_the_password_variable_is_unset():
    document = json.loads(run("environment", "show", "prod", "--json"))

    assert (document["name"], document["password_set"], document["protected"]) == ("PROD", False, True)


def test_environment_show_text_never_contains_the_password(monkeypatch):
    monkeypatch.setenv("ATLAS_TEST_PASSWORD", "s3cret-Zebra-42")

    out = run("environment", "show", "TEST")

    assert "s3cret-Zebra-42" not in out and "password_set: True" in out


def test_environment_set_refuses_parallelism_zero(ops):
    with pytest.raises(CommandError, match="parallelism"):
        run("environment", "set", "DEV", "--parallelism", "0", "--user", "ops-lead")
    assert Environment.objects.get(name="DEV").parallelism == 4


def test_environment_set_refuses_a_malformed_threshold(ops):
    with pytest.raises(CommandError, match="'abc' is not a count"):
        run("environment", "set", "DEV", "--failure-threshold", "abc", "--user", "ops-lead")


def test_environment_set_refuses_an_unknown_environment(ops):
    with pytest.raises(CommandError, match="no environment 'STAGING'"):
        run("environment", "set", "STAGING", "--parallelism", "2", "--user", "ops-lead")


def test_environment_set_needs_the_change_permission():
    make_user("launcher", "launch_step")

    with pytest.raises(CommandError, match="may not change .*: ask a PROD release manager"):
        run("environment", "set", "DEV", "--parallelism", "2", "--user", "launcher")
    assert AuditEvent.objects.filter(action="environment_set", outcome="refused").exists()


def test_environment_set_audits_old_and_new_values(ops):
    run("environment", "set", "DEV", "--parallelism", "8", "--failure-threshold", "5", "--user", "ops-lead")

    event = AuditEvent.objects.get(action="environment_set", outcome="ok")
    assert event.username == "ops-lead" and event.environment.name == "DEV"
    assert event.parameters == {"parallelism": [4, 8], "failure_threshold_count": [None, 5]}


def test_environment_set_percent_threshold_clears_the_count(ops):
    Environment.objects.filter(name="TEST").update(failure_threshold_count=3)

    run("environment", "set", "TEST", "--failure-threshold", "10%", "--user", "ops-lead")

    env = Environment.objects.get(name="TEST")
    assert (env.failure_threshold_count, env.failure_threshold_percent) == (None, 10.0)


def test_environment_set_none_clears_both_thresholds(ops):
    Environment.objects.filter(name="TEST").update(failure_threshold_count=3, failure_threshold_percent=5)

    run("environment", "set", "TEST", "--failure-threshold", "none", "--user", "ops-lead")

    env = Environment.objects.get(name="TEST")
    assert (env.failure_threshold_count, env.failure_threshold_percent) == (None, None)


def test_environment_set_refuses_a_malformed_password_variable(ops):
    with pytest.raises(CommandError, match="password_env"):
        run("environment", "set", "DEV", "--password-env", "not a var", "--user", "ops-lead")
