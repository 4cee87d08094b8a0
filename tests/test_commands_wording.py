"""Issue 21 §1 and §3 on the command line: every success line ends with the next action as a
command, counts are said once, a mistyped protected name is quoted back, and no kombu warning
reaches a command's output."""

import io
import logging

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from releases.cli import _progress_line
from releases.models import StepRun
from releases.states import StepState
from tests.support import R, T, make_user

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]


@pytest.fixture(autouse=True)
def runbook(monkeypatch):
    for name in ("DEV", "TEST", "PROD"):
        monkeypatch.delenv(f"ATLAS_{name}_PASSWORD", raising=False)  # previews answer at once
    call_command("loadrunbook", stdout=io.StringIO())
    make_user("ops-lead")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*args, **options) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=options.pop("stderr", io.StringIO()), **options)
    return out.getvalue()


def mark_done(*numbers) -> None:
    StepRun.objects.filter(number__in=numbers).update(state=StepState.SUCCEEDED, finished_at=timezone.now())


def test_create_finalize_and_launch_end_with_the_next_command():
    created = run("release", "create", "2.8.5", "--commit", R, "--user", "ops-lead")
    assert created.strip().endswith("Next: release launch 2.8.5 --stage DEV --user NAME")
    mark_done(2, 3, 4)
    launched = run("release", "launch", "2.8.5", "--stage", "TEST", "--user", "ops-lead", "--yes")
    assert launched.strip().endswith(
        "Next: wait for step 5 to finish (release status 2.8.5); then release finalize 2.8.5 --tag TAG "
        "--commit SHA --user NAME"
    )
    mark_done(5, 6)
    finalized = run("release", "finalize", "2.8.5", "--tag", "2.8.5", "--commit", T, "--user", "ops-lead")
    assert finalized.strip().endswith("Next: release launch 2.8.5 --stage DEV --user NAME")
    status = run("release", "status", "2.8.5")
    assert status.strip().endswith("Next: release launch 2.8.5 --stage DEV --user NAME")


def test_a_mistyped_protected_name_is_quoted_back():
    run("release", "create", "2.8.5", "--commit", R, "--user", "ops-lead")
    mark_done(*range(2, 12))
    with pytest.raises(CommandError) as refused:
        run("release", "launch", "2.8.5", "--step", "12", "--user", "ops-lead", stdin=Terminal("prod\n"))
    assert str(refused.value) == (
        "PROD is protected: type its name exactly to confirm (you typed 'prod'). Nothing was launched."
    )
    assert StepRun.objects.get(number=12).state == StepState.PENDING


def test_a_blocked_launch_is_refused_before_the_question_naming_the_first_waiting_step():
    run("release", "create", "2.8.5", "--commit", R, "--user", "ops-lead")
    err = io.StringIO()
    with pytest.raises(CommandError) as refused:
        run(
            "release",
            "launch",
            "2.8.5",
            "--stage",
            "PROD",
            "--user",
            "ops-lead",
            stdin=Terminal("PROD\n"),
            stderr=err,
        )
    title = StepRun.objects.get(number=2).title
    assert str(refused.value) == (
        f"step 12 cannot start: step 2 ({title}) is pending, and steps 3–11 are not done either"
    )
    assert "Type PROD" not in err.getvalue()


def test_a_finished_steps_counts_are_said_once():
    run("release", "create", "2.8.5", "--commit", R, "--user", "ops-lead")
    step = StepRun.objects.get(number=4)
    step.sites.create(site_id="a" * 24, path="webcentral", state="succeeded")
    counts = step.counts()
    step.state, step.message = StepState.SUCCEEDED, "1 succeeded, 0 failed, 0 skipped"
    step.result = {"counts": counts}
    step.save()
    assert _progress_line(step) == "step 4 [DEV] update_sites: succeeded (1 succeeded, 0 failed, 0 skipped)"
    step.state = StepState.RUNNING  # while it runs the live counts are the line
    assert _progress_line(step).startswith("step 4 [DEV] update_sites: running - 1/1 succeeded, 0 failed")


@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("filesystem://"),
    reason="the embedded broker's warning: this configuration uses CELERY_BROKER_URL's broker",
)
def test_sending_a_task_to_the_embedded_broker_logs_no_hostname_warning(caplog):
    from portal import celery_app

    with caplog.at_level(logging.WARNING, logger="kombu.connection"):
        with celery_app.connection_for_write() as connection:
            assert connection.as_uri().startswith("filesystem://")
    assert "No hostname was supplied" not in caplog.text
