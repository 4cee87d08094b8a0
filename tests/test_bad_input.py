"""Bad configuration and bad input at the command line, each on the real process
(`manage.py release …`): refused in one line on stderr (no traceback), a non-zero exit, nothing
launched, the refusal audited where there is a database to audit it in, and nothing sent to Atlas,
judged from the simulator's own request log.

A malformed DATABASE_URL and a database that does not answer are refused before Django starts up;
test_deployment shows that for `migrate`, the worker and gunicorn. Here the same refusals come from
`release preview`, and the simulator shows that Atlas heard nothing either.

What only a worker can find out (its own password variable unset or wrong) is judged on a launch
with `--wait`: the step fails at once, the command's last line says why, no write reaches Atlas.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from atlas.simulator import SimulatorServer
from releases import services
from releases.models import AuditEvent, Environment, ReleasePlan, StepRun, UpdateGroup
from releases.states import StepState
from tests.support import R, code_items, configure_environments, make_user
from tests.test_engine_faults import run_inline

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = os.environ.get("ATLAS_DEV_PASSWORD", "")
WRONG = "wrong-Pw-7c1e"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dev_atlas():
    server = SimulatorServer("dev", password=PASSWORD, pool_refill_delay=0)
    server.injector.record = True
    yield server
    server.stop()


@pytest.fixture
def release(dev_atlas, process_env):
    """`release(*args, **env)`: `manage.py release …` as a process, on DEV's simulator and a plan
    2.8.5 whose step 1 is done; an env value of None removes that variable."""
    configure_environments({"DEV": dev_atlas})
    user = make_user("ops-lead")
    services.create_plan("2.8.5", commit=R, user=user)
    dev_atlas.injector.requests.clear()

    def run(*args: str, **overrides: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in process_env(**overrides).items() if v is not None}
        return subprocess.run(
            [sys.executable, "manage.py", "release", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip

    return run


# -- what each case changes before the command runs ------------------------------------------------


def unreachable_url() -> None:
    Environment.objects.filter(name="DEV").update(
        api_url=f"http://127.0.0.1:{closed_port()}/", max_attempts=2
    )


def where_selector() -> None:
    """A selector saved behind the admin form's validation (the shell, a data migration)."""
    saved = UpdateGroup.objects.filter(environment__name="DEV", step_number=4).update(
        where={"$where": "function() { return true; }"}
    )
    assert saved == 1


def where_selector_with_steps_2_and_3_skipped() -> None:
    where_selector()
    plan, user = ReleasePlan.objects.get(version="2.8.5"), make_user("skipper")
    for number in (2, 3):
        services.skip(services.get_step(plan, number), user, "not needed by this test")


@dataclass
class Case:
    args: tuple[str, ...]
    expected: tuple[str, ...]  # each in the one line on stderr
    env: dict = field(default_factory=dict)
    prepare: object = None
    exit_code: int = 1
    refused: tuple[str, str] | None = None  # the audit event (action, username) of the refusal


PREVIEW_2 = ("preview", "2.8.5", "--step", "2")
LAUNCH = ("launch", "2.8.5", "--user", "ops-lead", "--yes", "--step")
CASES = {
    "malformed DATABASE_URL": Case(
        PREVIEW_2, ("DATABASE_URL is not a database URL",), env={"DATABASE_URL": "postgres//h/db"}, exit_code=2
    ),
    "database not answering": Case(
        PREVIEW_2,
        ("portal: database postgresql 127.0.0.1:",),
        env={"DATABASE_URL": f"postgres://portal:db-secret-Zq7@127.0.0.1:{closed_port()}/portal"},
        exit_code=2,
    ),
    "broker unreachable at launch": Case(
        (*LAUNCH, "2"),
        ("broker unreachable", "nothing was launched"),
        env={"CELERY_BROKER_URL": f"redis://127.0.0.1:{closed_port()}/12"},
        refused=("launch", "ops-lead"),
    ),
    "password variable not set": Case(
        PREVIEW_2,
        ("DEV: the password variable ATLAS_DEV_PASSWORD is not set in the environment",),
        env={"ATLAS_DEV_PASSWORD": None},
    ),
    "Atlas URL unreachable": Case(PREVIEW_2, ("Atlas DEV at http://127.0.0.1:", "could not connect"), prepare=unreachable_url),
    "malformed SHA at create": Case(
        ("create", "2.8.6", "--commit", "not-a-sha", "--user", "ops-lead"),
        ("commit 'not-a-sha' must be a full 40-character",),
    ),
    "malformed SHA at finalize": Case(
        ("finalize", "2.8.5", "--tag", "2.8.5", "--commit", "12345", "--user", "ops-lead"),
        ("commit '12345' must be a full 40-character",),
    ),
    "unknown version": Case(("launch", "9.9.9", "--user", "ops-lead", "--yes", "--step", "2"), ("no release '9.9.9'",)),
    "unknown user": Case(
        ("launch", "2.8.5", "--user", "nobody", "--yes", "--step", "2"),
        ("unknown user 'nobody'",),
        refused=("resolve_user", "nobody"),
    ),
    "out-of-order launch": Case((*LAUNCH, "4"), ("step 4 cannot start", "step 2"), refused=("launch", "ops-lead")),
    "$where selector at preview": Case(
        ("preview", "2.8.5", "--step", "4"),
        ("DEV update group 'webcentral and homepage' (step 4)", "$where operator is not allowed"),
        prepare=where_selector,
    ),
    "$where selector at launch": Case(
        (*LAUNCH, "4"),
        ("DEV update group 'webcentral and homepage' (step 4)", "$where operator is not allowed"),
        prepare=where_selector_with_steps_2_and_3_skipped,
        refused=("launch", "ops-lead"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_configuration_or_input_is_refused_in_one_line_and_nothing_reaches_atlas(
    release, dev_atlas, case
):
    if case.prepare:
        case.prepare()

    result = release(*case.args, **case.env)

    assert result.returncode == case.exit_code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in case.expected:
        assert text in lines[0]
    assert "db-secret-Zq7" not in result.stderr and PASSWORD not in result.stderr + result.stdout
    assert dev_atlas.injector.requests == [], "a request reached Atlas"
    # Nothing was launched: every step but the ones recorded or skipped is pending, with no task.
    steps = StepRun.objects.filter(plan__version="2.8.5")
    assert not steps.exclude(state__in=[StepState.PENDING, StepState.SKIPPED]).exclude(number=1).exists()
    assert not [s.task_ids for s in steps if s.task_ids]
    assert not ReleasePlan.objects.exclude(version="2.8.5").exists()
    if case.refused:
        action, username = case.refused
        refusals = AuditEvent.objects.filter(action=action, username=username, outcome="refused")
        assert refusals.count() == 1
        if action == "launch":
            assert refusals.get().message in lines[0]


@pytest.mark.parametrize("number", ["2", "3"])  # deploying the code item, and a site step
def test_a_wrong_atlas_password_is_refused_in_one_line_naming_environment_and_variable(
    release, dev_atlas, number
):
    result = release("preview", "2.8.5", "--step", number, ATLAS_DEV_PASSWORD=WRONG)

    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert "Atlas DEV refused the credentials" in line and "ATLAS_DEV_PASSWORD" in line, line
    assert WRONG not in result.stderr + result.stdout and PASSWORD not in result.stderr + result.stdout
    # Atlas saw one request, the side-effect-free credentials probe, and refused it: one LDAP bind.
    seen = [(method, status) for method, _, _, _, status in dev_atlas.injector.requests]
    assert seen == [("PATCH", 401)]
    assert len(dev_atlas.events.of_kind("auth_failed")) == 1
    assert code_items(dev_atlas, **{"meta.version": "2.8.5"}) == []


def test_a_worker_without_the_password_variable_fails_the_step_at_once_naming_it(
    release, dev_atlas, start_worker
):
    """The launching process needs no Atlas password (only workers talk to Atlas), so the launch
    is taken; the worker that lacks the variable fails the step before sending anything, and
    `--wait` exits non-zero with the reason as its last line."""
    start_worker("no-password", env={"ATLAS_DEV_PASSWORD": ""})

    result = release("launch", "2.8.5", "--step", "2", "--user", "ops-lead", "--yes", "--wait")

    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "CommandError: step 2 ended failed: DEV: the password variable ATLAS_DEV_PASSWORD"
    ), last
    assert StepRun.objects.get(plan__version="2.8.5", number=2).state == StepState.FAILED
    assert dev_atlas.injector.requests == [], "a request reached Atlas"


def test_a_launched_site_step_with_a_wrong_password_fails_in_one_line_after_one_refused_request(
    release, dev_atlas, start_worker
):
    plan, user = ReleasePlan.objects.get(version="2.8.5"), make_user("deployer")
    assert run_inline(services.get_step(plan, 2), user) == StepState.SUCCEEDED  # the release item
    start_worker("wrong-password", env={"ATLAS_DEV_PASSWORD": WRONG})
    dev_atlas.injector.requests.clear()

    result = release("launch", "2.8.5", "--step", "3", "--user", "ops-lead", "--yes", "--wait")

    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("CommandError: step 3 ended failed: Atlas DEV refused the credentials"), last
    assert "password variable ATLAS_DEV_PASSWORD" in last
    assert WRONG not in result.stderr + result.stdout and PASSWORD not in result.stderr + result.stdout
    # Public reads (GETs need no login on Atlas) and one refused credentials probe: no write landed.
    seen = [(method, status) for method, _, _, _, status in dev_atlas.injector.requests]
    assert [s for s in seen if s[0] != "GET"] == [("PATCH", 401)], seen
    assert len(dev_atlas.events.of_kind("auth_failed")) == 1
    assert not dev_atlas.events.of_kind("site_remove")
