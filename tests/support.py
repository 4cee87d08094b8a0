"""Helpers for tests that run releases against simulators and worker processes."""

from __future__ import annotations

import time
from contextlib import contextmanager
from unittest.mock import patch

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command

from atlas.simulator import SimulatorServer
from releases import roles
from releases.models import Environment, ReleasePlan, StepRun
from releases.states import ACTIVE, StepState

R = "a" * 39 + "1"  # release-branch HEAD
T = "b" * 39 + "2"  # the finalized commit (a --no-ff merge, so not R)
OPERATOR_PERMISSIONS = (
    "add_releaseplan",
    "launch_step",
    "launch_protected",
    "finalize_release",
    "change_environment",
)


def make_user(username: str = "ops-lead", permissions=OPERATOR_PERMISSIONS, staff: bool = True):
    user = get_user_model().objects.create_user(username, password="pw", is_staff=staff)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="releases", codename__in=permissions)
    )
    return get_user_model().objects.get(pk=user.pk)  # fresh permission cache


def member(username: str, role: str = roles.PROD_RELEASE_MANAGERS, password: str | None = "pw"):
    """A staff account whose only permissions are its role's group. `role` is a group name
    (`roles.VIEWERS`) or a demo account's name for its role ("release-manager"); no `password`
    makes one nobody can log in with (cheaper to create; tests use `force_login`)."""
    from django.contrib.auth.models import Group

    roles.ensure_groups()  # a transactional test before may have flushed them
    group = dict(roles.DEMO_ACCOUNTS).get(role, role)
    user = get_user_model().objects.create_user(username, password=password, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return get_user_model().objects.get(pk=user.pk)  # fresh permission cache


def configure_environments(sims: dict[str, SimulatorServer], **overrides) -> dict[str, Environment]:
    """loadrunbook, then point each environment at its simulator with fast test timings."""
    call_command("loadrunbook", verbosity=0)
    values = dict(
        deploy_wait_seconds=0,
        batch_pause_seconds=0,
        pool_wait_seconds=15,
        parallelism=4,
        max_attempts=6,
        read_timeout_seconds=5,
        canary=False,  # PROD's canary is its own tests' business (tests/test_verification.py)
        # The write engine's tests (pause, abort, faults, queries a site) run with verification
        # off, as `environment set --verify off` does; verification has its own tests
        # (tests/test_verification.py) and the whole-release flows keep it on (`verify=True`).
        verify=False,
    )
    values.update(overrides)
    for name, sim in sims.items():
        Environment.objects.filter(name=name).update(
            api_url=sim.url, site_url=sim.site_url, username="release-portal", **values
        )
    return {e.name: e for e in Environment.objects.all()}


def wait_until_idle(plan: ReleasePlan, timeout: float = 120) -> list[StepRun]:
    """Wait until no step of the plan is running (paused counts as idle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not plan.steps.filter(state=StepState.RUNNING).exists():
            return list(plan.steps.order_by("number"))
        time.sleep(0.2)
    running = list(plan.steps.filter(state__in=ACTIVE).values_list("number", "state", "message"))
    raise AssertionError(f"steps still active after {timeout}s: {running}")


def states(plan: ReleasePlan) -> dict[int, str]:
    return dict(plan.steps.values_list("number", "state"))


def sites(sim: SimulatorServer, **query) -> list[dict]:
    with sim.lock:
        return list(sim.db["sites"].find({"_deleted": {"$ne": True}, **query}))


def code_items(sim: SimulatorServer, **query) -> list[dict]:
    with sim.lock:
        return list(sim.db["code"].find({"_deleted": {"$ne": True}, **query}))


@contextmanager
def tasks_not_sent():
    """Launch without handing tasks to the broker (the test runs the engine itself); yields the
    mock of `send_task`, so a test can count what would have been sent."""
    with patch("celery.app.base.Celery.send_task", autospec=True) as send:
        yield send


def run_engine(step: StepRun, owner: str = "test-owner") -> str | None:
    """Run a launched step's engine here, in this process, and finish it as the task would.
    Needs committed data (`django_db(transaction=True)`): the lease heartbeat uses its own
    database connection."""
    from releases import engine, services

    ran = engine.execute(step.pk, owner)
    if ran is None:
        return None
    return services.complete_step(ran[0], owner, ran[1])
