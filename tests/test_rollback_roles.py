"""Issue 20 §4 through the shell: `manage.py release rollback … --user NAME` tried by each person
its protections are meant to stop, on PROD (protected) and on TEST (unprotected, then protected).

Judged from Atlas's side: the simulator's request log must show no write at all after a refused
command (not only no change in our rows), then the audit rows the refusals leave (action
`rollback`, outcome `refused`, channel `shell`, the user named). Each test ends with the person
who may do it running the same command, so the refused rollback was one that could be done.

PROD's step 14 and TEST's step 11 run as tests/test_rollback.py runs step 14: only the step's first
update group (5 sites), two of them broken by the release, so they fail verification and the step
pauses with them failed.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from releases import services
from releases.models import AuditEvent, Environment, SiteResult, StepRun, UpdateGroup
from releases.states import RollbackState, StepState
from tests.support import R, T, configure_environments, make_user, run_engine, sites, tasks_not_sent
from tests.test_engine_faults import run_inline
from tests.test_rollback import failed_step_14
from tests.test_verification import SITE_PATCH

pytestmark = pytest.mark.django_db(transaction=True)

WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# -- helpers ------------------------------------------------------------------------------------


def rollback_command(step: int, user: str, *more: str) -> dict:
    """Run `release rollback 2.8.5 --step N --failed --user NAME --yes --json` (its task not sent);
    returns its JSON document, or raises its CommandError."""
    out = io.StringIO()
    args = ("release", "rollback", "2.8.5", "--step", str(step), *more, "--user", user, "--yes", "--json")
    with tasks_not_sent():
        call_command(*args, stdout=out, stderr=io.StringIO(), stdin=io.StringIO(""))
    return json.loads(out.getvalue())


def refused(step: int, user: str, *more: str, match: str) -> None:
    with pytest.raises(CommandError, match=match) as raised:
        rollback_command(step, user, *(more or ("--failed",)))
    assert raised.value.returncode == 1


def writes_since(atlas, mark: int) -> list[tuple[str, str]]:
    return [(method, path) for method, path, *_ in list(atlas.injector.requests)[mark:] if method in WRITES]


def site_patches_since(atlas, mark: int) -> Counter:
    found = Counter()
    for method, path, *_ in list(atlas.injector.requests)[mark:]:
        match = SITE_PATCH.match(path)
        if method == "PATCH" and match:
            found[match.group(1)] += 1
    return found


def profile_of(atlas, path: str) -> str:
    (site,) = [site for site in sites(atlas) if site["path"] == path]
    return str(site["code"]["profile"])


def refusals(step: StepRun) -> list[tuple[str, str]]:
    """(user, channel) of each refused rollback of the step, in order."""
    rows = AuditEvent.objects.filter(action="rollback", outcome="refused", step=step).order_by("id")
    return list(rows.values_list("username", "channel"))


def assert_untouched(atlas, step: StepRun, mark: int) -> None:
    """Nothing written to Atlas since `mark`, and the step as it was: paused, no rollback."""
    assert writes_since(atlas, mark) == [], "a refused rollback wrote to Atlas"
    step = StepRun.objects.get(pk=step.pk)
    assert step.state == StepState.PAUSED and "rollback" not in (step.result or {})
    assert not SiteResult.objects.filter(step=step).exclude(rollback="").exists()
    assert not AuditEvent.objects.filter(action="rollback", outcome="ok").exists()


def failed_step_11(simulator, broken: int = 2):
    """TEST's step 11 (its first update group, one batch of 5) run to its end with `broken` of its
    sites broken by the release: step 5 deployed the release item to TEST in-process, the other
    steps before 11 skipped or recorded. Returns (test atlas, step, broken paths, earlier items)."""
    test = simulator("test", password=os.environ["ATLAS_TEST_PASSWORD"], update_ms=30)
    configure_environments({"TEST": test}, verify=True, verify_timeout_seconds=2, failure_threshold_count=100)
    user = make_user()
    plan = services.create_plan("2.8.5", commit=R, user=user)
    for number in (2, 3, 4):
        services.skip(services.get_step(plan, number), user, "not needed by this test")
    assert run_inline(services.get_step(plan, 5), user) == StepState.SUCCEEDED
    services.skip(services.get_step(plan, 6), user, "not needed by this test")
    services.finalize(plan, tag=plan.version, commit=T, user=user)
    for number in (8, 9, 10):
        services.skip(services.get_step(plan, number), user, "not needed by this test")
    groups = list(
        UpdateGroup.objects.filter(environment__name="TEST", step_number=11).order_by("position", "id")
    )
    UpdateGroup.objects.filter(pk__in=[g.pk for g in groups[1:]]).update(enabled=False)
    first = groups[0]
    matched = sites(test, status=first.status, update_group=first.update_group)
    paths = [site["path"] for site in sorted(matched, key=lambda site: str(site["_id"]))]
    assert len(paths) > broken, f"TEST's first step-11 group matches {paths}: the case cannot be shown"
    before = {site["path"]: str(site["code"]["profile"]) for site in matched}
    test.injector.record = True
    test.break_on_update(*paths[:broken])
    step = services.get_step(plan, 11)
    assert run_inline(step, user) == StepState.PAUSED
    failed = set(SiteResult.objects.filter(step=step, state="failed").values_list("path", flat=True))
    assert failed == set(paths[:broken]), StepRun.objects.get(pk=step.pk).message
    return test, StepRun.objects.get(pk=step.pk), paths[:broken], before


# -- PROD ---------------------------------------------------------------------------------------


def assert_rolled_back_once(sim, step, broken, before, mark) -> None:
    """The permitted person's rollback ran: at Atlas each broken site PATCHed once since `mark`,
    back on its earlier item; the rows say rolled back."""
    assert run_engine(step) == StepState.PAUSED
    rows = {row.path: row for row in SiteResult.objects.filter(step=step, path__in=broken)}
    assert site_patches_since(sim, mark) == Counter({row.site_id: 1 for row in rows.values()})
    for path, row in rows.items():
        assert profile_of(sim, path) == before[path] and row.rollback == RollbackState.DONE


def test_on_prod_a_viewer_a_dev_only_manager_and_a_non_staff_account_are_refused_by_the_shell(
    simulator, viewer, release_manager, prod_manager
):
    """`release rollback 2.8.5 --step 14 --failed --user …` as a viewer, as a release manager
    (DEV and TEST only), naming one site, and as an account that is not staff: each exits 1
    naming why, Atlas receives no write, and each refusal is audited under the shell channel
    (the unknown account's as `resolve_user`). The PROD release manager's command then rolls
    both failed sites back: one PATCH each, onto the earlier item."""
    prod, step, _, broken, before = failed_step_14(simulator)
    make_user("contractor", permissions=("launch_step", "launch_protected"), staff=False)
    mark = len(prod.injector.requests)

    refused(14, "viewer", match=r"viewer may not roll back sites on the protected environment PROD")
    refused(14, "viewer", "--sites", broken[0], match="viewer may not roll back")
    refused(
        14,
        "release-manager",
        match="release-manager may not roll back sites on the protected environment PROD: ask a PROD "
        "release manager",
    )
    refused(14, "release-manager", "--sites", ",".join(broken), match="protected environment PROD")
    refused(14, "contractor", match="unknown user 'contractor'")

    assert_untouched(prod, step, mark)
    assert refusals(step) == [
        ("viewer", "shell"),
        ("viewer", "shell"),
        ("release-manager", "shell"),
        ("release-manager", "shell"),
    ]
    messages = AuditEvent.objects.filter(action="rollback", outcome="refused").values_list(
        "message", flat=True
    )
    assert all("may not roll back sites" in message for message in messages)
    assert AuditEvent.objects.filter(action="resolve_user", outcome="refused", username="contractor").exists()

    document = rollback_command(14, "prod-manager", "--failed")
    assert document["action"] == "rollback" and document["step"]["state"] == StepState.RUNNING
    assert_rolled_back_once(prod, step, broken, before, mark)
    ok = AuditEvent.objects.filter(action="rollback", outcome="ok", step=step)
    assert set(ok.values_list("username", "channel")) == {("prod-manager", "shell")} and ok.count() == 2


def test_on_prod_the_shell_refuses_a_site_the_step_never_changed_whoever_asks(simulator, prod_manager):
    """A site step 14 targeted and verified but whose PATCH the step never recorded (as one it
    never sent) is refused by name even to a PROD release manager; nothing reaches Atlas."""
    prod, step, _, broken, _ = failed_step_14(simulator)
    untouched = SiteResult.objects.filter(step=step, state="succeeded").first()
    SiteResult.objects.filter(pk=untouched.pk).update(patched_at=None)
    mark = len(prod.injector.requests)

    refused(
        14,
        "prod-manager",
        "--sites",
        f"{broken[0]},{untouched.path}",
        match=rf"{untouched.path} \(the step never changed it\)",
    )
    refused(14, "prod-manager", "--sites", "no-such-site", match="did not target no-such-site")

    assert_untouched(prod, step, mark)
    assert refusals(step) == [("prod-manager", "shell"), ("prod-manager", "shell")]


# -- TEST ---------------------------------------------------------------------------------------


def test_on_test_a_viewer_is_refused_and_a_release_manager_is_refused_once_test_is_protected(
    simulator, viewer, release_manager, prod_manager
):
    """TEST unprotected: a viewer is refused (no permission to roll back anywhere). TEST made
    protected: the release manager (who lacks the protected permission) is refused too, naming
    TEST. No write reaches TEST's Atlas in either case; each refusal is audited under the shell.
    Unprotected again, the same release manager's command rolls the failed sites back."""
    test, step, broken, before = failed_step_11(simulator)
    mark = len(test.injector.requests)

    refused(11, "viewer", match=r"viewer may not roll back sites: ask a release manager")
    Environment.objects.filter(name="TEST").update(protected=True)
    refused(11, "viewer", match="viewer may not roll back sites on the protected environment TEST")
    refused(
        11,
        "release-manager",
        match="release-manager may not roll back sites on the protected environment TEST: ask a PROD "
        "release manager",
    )

    assert_untouched(test, step, mark)
    assert refusals(step) == [("viewer", "shell"), ("viewer", "shell"), ("release-manager", "shell")]

    Environment.objects.filter(name="TEST").update(protected=False)
    document = rollback_command(11, "release-manager", "--failed")
    assert document["step"]["state"] == StepState.RUNNING
    assert_rolled_back_once(test, step, broken, before, mark)
    ok = AuditEvent.objects.filter(action="rollback", outcome="ok", step=step)
    assert set(ok.values_list("username", "channel")) == {("release-manager", "shell")}
