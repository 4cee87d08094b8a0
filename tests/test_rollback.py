"""Issue 20 §4: putting failed sites back (`release rollback`, the step page's Roll back).

Judged from Atlas's side: the simulator's request log (which sites were PATCHed, how often, onto
which item) and its sites' timelines (the update onto the earlier item ran and the site reported
its version cleanly and served its page afterwards), then the portal's rows and audit.

Step 14 runs on a small PROD (100 sites) with only its first update group enabled (5 sites);
two of them break on the release (their page answers 500), so they fail verification and the
step pauses with them failed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections import Counter

import pytest
from bson import ObjectId
from django.core.management import call_command
from django.core.management.base import CommandError

from releases import services
from releases.models import AuditEvent, Environment, LaunchRequest, SiteResult, StepRun
from releases.services import ActionRefused, approvals, rollback
from releases.states import RollbackState, SiteState, StepState
from tests.support import make_user, run_engine, sites, tasks_not_sent
from tests.test_engine_faults import release_item, wait_for
from tests.test_verification import (
    first_at,
    first_group_paths,
    prod_simulator,
    site_patches,
    step_14_in_batches,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def failed_step_14(simulator, broken: int = 2, **environment):
    """PROD's step 14 (one batch of 5) run to its end with `broken` of its sites broken by the
    release: they fail verification and the step pauses. Returns (prod, step, user, broken paths,
    the item each site was on before)."""
    prod = prod_simulator(simulator, update_ms=30)
    step, user = step_14_in_batches(
        prod, 1, verify_timeout_seconds=2, failure_threshold_count=100, **environment
    )
    paths = first_group_paths(prod)
    before = {site["path"]: str(site["code"]["profile"]) for site in sites(prod) if site["path"] in paths}
    prod.break_on_update(*paths[:broken])
    with tasks_not_sent():
        services.launch(step, user)
    assert run_engine(step) == StepState.PAUSED
    step.refresh_from_db()
    failed = set(SiteResult.objects.filter(step=step, state=SiteState.FAILED).values_list("path", flat=True))
    assert failed == set(paths[:broken]), step.message
    return prod, step, user, paths[:broken], before


def paused_at_the_threshold(simulator):
    """Step 14 in two batches (5 sites each), a threshold of 2 failures: batch 1's two broken
    sites pause the step before batch 2 is sent anything, so batch 2's sites are sites the step
    targeted and never changed. Returns (prod, step, user, broken paths, batch 2's (path, id))."""
    prod = prod_simulator(simulator, update_ms=30)
    step, user = step_14_in_batches(prod, 2, verify_timeout_seconds=2, failure_threshold_count=2)
    broken = first_group_paths(prod)[:2]
    prod.break_on_update(*broken)
    with tasks_not_sent():
        services.launch(step, user)
    assert run_engine(step) == StepState.PAUSED
    step.refresh_from_db()
    assert step.message.startswith("failure threshold"), step.message
    second = list(SiteResult.objects.filter(step=step, batch_index=1).values_list("path", "site_id"))
    assert second, "step 14 has no second batch: the case cannot be shown"
    assert not {site_id for site_id, _ in site_patches(prod)} & {site_id for _, site_id in second}
    return prod, step, user, broken, second


def run_rollback(step: StepRun, user, **chosen) -> str | None:
    with tasks_not_sent():
        rollback.roll_back(step, user, confirm=step.plan.version, **chosen)
    return run_engine(step)


def profile_of(prod, path: str) -> str:
    (site,) = [site for site in sites(prod) if site["path"] == path]
    return str(site["code"]["profile"])


# -- the rollback itself --------------------------------------------------------------------------


def test_rollback_of_the_failed_sites_patches_each_once_onto_its_earlier_item_and_verifies_it(simulator):
    """`--failed`: the two broken sites, and only they, are PATCHed once each, onto the item each
    was on before step 14; Atlas updates them onto it; each then reports the earlier version
    cleanly and serves its page (200), after the rollback's PATCH. The rows say rolled back and
    stay failed (a rollback does not make them succeeded); the step ends paused, as it was."""
    prod, step, user, broken, before = failed_step_14(simulator)
    started = max(arrived for _, arrived in site_patches(prod))

    assert run_rollback(step, user, failed=True) == StepState.PAUSED

    patched = Counter(site_id for site_id, arrived in site_patches(prod) if arrived > started)
    rows = {row.path: row for row in SiteResult.objects.filter(step=step)}
    assert patched == Counter({rows[path].site_id: 1 for path in broken})
    for path in broken:
        row = rows[path]
        assert profile_of(prod, path) == before[path] == row.previous_profile
        assert row.rollback == RollbackState.DONE, row.rollback_message
        assert row.state == SiteState.FAILED
        ran = first_at(prod, "update_finished", row.site_id, after=started, profile=ObjectId(before[path]))
        ran = ran or first_at(prod, "update_finished", row.site_id, after=started, profile=before[path])
        assert ran is not None, f"{path}: Atlas never updated it back"
        assert first_at(prod, "page_get", row.site_id, after=ran, status=200) is not None, path
        assert row.reported_error is False and row.reported_version != step.plan.version
    for path in set(rows) - set(broken):
        assert rows[path].rollback == "" and profile_of(prod, path) != before[path]
    step.refresh_from_db()
    assert step.counts()["rolled_back"] == 2 and step.counts()["failed"] == 2
    assert "rollback by ops-lead: 2 of 2 sites back on their earlier item" in step.message
    audited = AuditEvent.objects.filter(action="rollback_site", step=step, outcome="ok")
    assert sorted(audited.values_list("parameters__path", flat=True)) == sorted(broken)
    assert AuditEvent.objects.filter(action="rollback", step=step, user=user).count() == 2


def test_a_rollback_write_found_sent_by_a_dead_worker_is_read_again_and_not_sent_twice(simulator):
    """A worker died with one site's rollback PATCH sent (the row `dispatched`, Atlas already on
    the earlier item): the next owner reads the site, sends nothing for it, and verifies it."""
    prod, step, user, broken, before = failed_step_14(simulator)
    with tasks_not_sent():
        rollback.roll_back(step, user, failed=True, confirm=step.plan.version)
    gone = SiteResult.objects.get(step=step, path=broken[0])
    SiteResult.objects.filter(pk=gone.pk).update(rollback=RollbackState.DISPATCHED)
    atlas = Environment.objects.get(name="PROD").client()  # the dead worker's PATCH, as it was sent
    atlas.update_site_profile(gone.site_id, before[broken[0]], etag=atlas.get_site(gone.site_id).etag)
    started = max(arrived for _, arrived in site_patches(prod))

    assert run_engine(step, owner="second-worker") == StepState.PAUSED

    patched = [site_id for site_id, arrived in site_patches(prod) if arrived > started]
    assert gone.site_id not in patched and len(patched) == 1
    assert set(SiteResult.objects.filter(step=step, path__in=broken).values_list("rollback", flat=True)) == {
        RollbackState.DONE
    }


def test_a_site_changed_by_someone_else_since_the_step_is_left_alone(simulator):
    """Another writer moved a failed site onto a third item: the rollback sends it nothing and
    says why; the other failed site is rolled back."""
    prod, step, user, broken, before = failed_step_14(simulator)
    other = [item for item in prod.db["code"].find({"meta.code_type": "profile"})]
    taken = {*before.values(), str(release_item(prod)["_id"])}
    thirds = [str(item["_id"]) for item in other if str(item["_id"]) not in taken]
    assert thirds, "the simulator has no third profile item: the case cannot be shown"
    third = thirds[0]
    moved = SiteResult.objects.get(step=step, path=broken[0])
    with prod.lock:
        prod.db["sites"].update_one(
            {"_id": ObjectId(moved.site_id)}, {"$set": {"code.profile": ObjectId(third)}}
        )
    started = max(arrived for _, arrived in site_patches(prod))

    run_rollback(step, user, failed=True)

    patched = [site_id for site_id, arrived in site_patches(prod) if arrived > started]
    assert moved.site_id not in patched and len(patched) == 1
    moved.refresh_from_db()
    assert moved.rollback == RollbackState.FAILED and "changed since the step" in moved.rollback_message
    assert profile_of(prod, broken[0]) == third


# -- refusals -------------------------------------------------------------------------------------


def test_rollback_is_refused_for_sites_the_step_never_changed_or_did_not_target(simulator):
    prod, step, user, broken, before = failed_step_14(simulator)
    untouched = SiteResult.objects.filter(step=step, state=SiteState.SUCCEEDED).first()
    SiteResult.objects.filter(pk=untouched.pk).update(patched_at=None)  # as a site it never PATCHed
    log = len(site_patches(prod))

    with pytest.raises(ActionRefused, match=rf"{untouched.path} \(the step never changed it\)"):
        rollback.roll_back(step, user, paths=[untouched.path, broken[0]])
    with pytest.raises(ActionRefused, match="did not target no-such-site"):
        rollback.roll_back(step, user, paths=["no-such-site"])
    with pytest.raises(ActionRefused, match="name the sites"):
        rollback.roll_back(step, user, paths=[" "])

    assert len(site_patches(prod)) == log
    assert not SiteResult.objects.filter(step=step).exclude(rollback="").exists()
    assert AuditEvent.objects.filter(action="rollback", outcome="refused").count() == 3


def test_rollback_is_refused_when_the_earlier_item_is_gone(simulator):
    prod, step, user, broken, before = failed_step_14(simulator)
    with prod.lock:
        prod.db["code"].update_one({"_id": ObjectId(before[broken[0]])}, {"$set": {"_deleted": True}})

    with pytest.raises(ActionRefused, match="no longer exists in Atlas"):
        rollback.roll_back(step, user, failed=True, confirm=step.plan.version)
    step.refresh_from_db()
    assert step.state == StepState.PAUSED and "rollback" not in step.result


def test_database_updates_need_the_typed_version_and_a_running_step_is_refused(simulator):
    prod, step, user, broken, before = failed_step_14(simulator)
    prepared = rollback.prepare(step, user, failed=True)
    assert prepared.database, "the simulator's release item runs database updates"
    assert any("NOT rolled back" in line for line in prepared.describe())

    with pytest.raises(ActionRefused, match=r"type 2\.8\.5 to confirm \(typed: '2\.8'\)"):
        rollback.roll_back(step, user, failed=True, confirm="2.8")
    with tasks_not_sent():
        rollback.roll_back(step, user, failed=True, confirm="2.8.5")
    step.refresh_from_db()
    assert step.state == StepState.RUNNING
    with pytest.raises(ActionRefused, match="a rollback starts once it is paused or has ended"):
        rollback.roll_back(step, user, failed=True, confirm="2.8.5")


def test_rollback_needs_the_protected_permission_on_prod(simulator):
    prod, step, user, broken, before = failed_step_14(simulator)
    dev_only = make_user("dev-only", permissions=("launch_step",))

    with pytest.raises(
        ActionRefused, match="may not roll back sites on the protected environment PROD: ask a PROD"
    ):
        rollback.roll_back(step, dev_only, failed=True, confirm="2.8.5")
    assert AuditEvent.objects.filter(action="rollback", outcome="refused", username="dev-only").exists()


# -- two people and the command line -------------------------------------------------------------


def test_on_a_two_person_environment_a_rollback_is_a_request_the_requester_cannot_approve(simulator):
    prod, step, user, broken, before = failed_step_14(simulator)
    Environment.objects.filter(name="PROD").update(two_person=True)
    step.refresh_from_db()
    approver = make_user("second")
    log = len(site_patches(prod))

    rollback.roll_back(step, user, failed=True, confirm="2.8.5")
    request = approvals.pending_request(step)
    assert request is not None and request.action == LaunchRequest.Action.ROLLBACK and len(request.sites) == 2
    with pytest.raises(ActionRefused, match="another person must approve"):
        approvals.approve(step, user, request_id=request.pk)
    assert len(site_patches(prod)) == log and StepRun.objects.get(pk=step.pk).state == StepState.PAUSED

    with tasks_not_sent():
        approvals.approve(step, approver, request_id=request.pk)
    assert run_engine(step) == StepState.PAUSED
    assert set(SiteResult.objects.filter(step=step, path__in=broken).values_list("rollback", flat=True)) == {
        RollbackState.DONE
    }


def test_release_rollback_command_names_the_sites_and_refuses_without_a_terminal(simulator):
    prod, step, user, broken, before = failed_step_14(simulator)
    args = ("release", "rollback", "2.8.5", "--step", "14", "--sites", broken[0], "--user", "ops-lead")

    with pytest.raises(CommandError, match="refusing to roll back without confirmation"):
        call_command(*args, stdin=io.StringIO(""), stdout=io.StringIO(), stderr=io.StringIO())
    out = io.StringIO()
    with tasks_not_sent():
        call_command(*args, "--yes", "--json", stdout=out, stderr=io.StringIO())
    document = json.loads(out.getvalue())
    assert document["action"] == "rollback" and document["step"]["state"] == StepState.RUNNING
    assert run_engine(step) == StepState.PAUSED
    assert SiteResult.objects.get(step=step, path=broken[0]).rollback == RollbackState.DONE
    assert SiteResult.objects.get(step=step, path=broken[1]).rollback == ""


# -- the admin's Roll back ------------------------------------------------------------------------


def test_roll_back_on_the_step_page_confirms_what_it_does_then_rolls_the_selected_sites_back(
    simulator, client
):
    """The step page lists the failed sites with a `Roll back` control; the selection goes to a
    confirmation that names each site's earlier version and the database warning, and asks for
    PROD's name and the version; a wrong name refuses and starts nothing; the right one rolls
    back exactly the selected site."""
    prod, step, user, broken, before = failed_step_14(simulator)
    client.force_login(user)
    step_url = f"/admin/releases/releaseplan/{step.plan.pk}/step/14/"
    page = client.get(step_url).content.decode()
    assert "Roll back selected sites" in page and all(path in page for path in broken)
    chosen = SiteResult.objects.get(step=step, path=broken[0])
    url = f"{step_url}rollback/"

    confirmation = client.post(url, {"site": [chosen.pk]}).content.decode()
    assert "NOT rolled back" in confirmation and 'name="confirm_environment"' in confirmation
    assert (
        'name="confirm_version"' in confirmation
        and broken[0] in confirmation
        and broken[1] not in confirmation
    )
    typed = {"site": [chosen.pk], "confirmed": "1", "confirm_version": "2.8.5", "confirm_environment": "prod"}
    refused = client.post(url, typed).content.decode()
    assert "type PROD to confirm (typed: &#x27;prod&#x27;)" in refused
    assert StepRun.objects.get(pk=step.pk).state == StepState.PAUSED

    with tasks_not_sent():
        response = client.post(url, {**typed, "confirm_environment": "PROD"})
    assert response.status_code == 302 and response.url == step_url
    assert run_engine(step) == StepState.PAUSED
    assert SiteResult.objects.get(pk=chosen.pk).rollback == RollbackState.DONE
    assert SiteResult.objects.get(step=step, path=broken[1]).rollback == ""


def test_the_step_page_offers_roll_back_only_to_whom_it_is_allowed(simulator, client):
    """A DEV/TEST-only release manager sees no Roll back on PROD's step and is refused (audited)
    when posting it anyway; nothing is started."""
    prod, step, user, broken, before = failed_step_14(simulator)
    dev_only = make_user("dev-only", permissions=("launch_step", "view_releaseplan"))
    client.force_login(dev_only)
    step_url = f"/admin/releases/releaseplan/{step.plan.pk}/step/14/"
    assert "Roll back selected sites" not in client.get(step_url).content.decode()
    chosen = SiteResult.objects.get(step=step, path=broken[0])

    client.post(
        f"{step_url}rollback/", {"site": [chosen.pk], "confirmed": "1", "confirm_environment": "PROD"}
    )

    assert StepRun.objects.get(pk=step.pk).state == StepState.PAUSED
    assert SiteResult.objects.get(pk=chosen.pk).rollback == ""
    assert AuditEvent.objects.filter(action="rollback", outcome="refused", username="dev-only").exists()


def test_after_a_rollback_a_resume_goes_on_with_the_next_batch_counting_failures_anew(simulator):
    """Two batches, threshold 2 failures: batch 1's two broken sites pause the step before batch 2
    sends anything. Rolled back, then resumed: the threshold counts from the resume, so batch 2 is
    PATCHed (Atlas's log) and verified; the step ends paused, its two failed sites still listed."""
    prod, step, user, _, batch_2 = paused_at_the_threshold(simulator)
    second = {site_id for _, site_id in batch_2}

    assert run_rollback(step, user, failed=True) == StepState.PAUSED
    with tasks_not_sent():
        services.resume_step(StepRun.objects.get(pk=step.pk), user)
    assert run_engine(step) == StepState.PAUSED

    assert second <= {site_id for site_id, _ in site_patches(prod)}
    step.refresh_from_db()
    counts = step.counts()
    assert (counts["failed"], counts["rolled_back"], counts["succeeded"]) == (2, 2, 8), step.message
    assert "retry the failed sites, skip or abort" in step.message


# -- the skeptic review's cases -------------------------------------------------------------------


def test_a_site_whose_forward_update_may_still_be_queued_is_not_rolled_back(simulator):
    """One update worker at 3 s a site, a 1 s deadline: sites fail verification while their update
    still waits in Atlas's queue. Rolling them back now would queue the rollback behind the
    release's update, which could end last (§3.6): refused, saying so; nothing is PATCHed."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=3000)
    step, user = step_14_in_batches(
        prod, 1, verify_timeout_seconds=1, failure_threshold_count=100, max_unverified=5, parallelism=5
    )
    with tasks_not_sent():
        services.launch(step, user)
    ended = run_engine(step)
    step.refresh_from_db()
    assert ended == StepState.PAUSED, (ended, step.state, step.message)
    queued = [
        row
        for row in SiteResult.objects.filter(step=step, state=SiteState.FAILED)
        if row.reported_version != step.plan.version
    ]
    assert queued, "no site failed with its update still queued: the case is not shown"
    log = len(site_patches(prod))

    with pytest.raises(ActionRefused, match="may still be queued at Atlas"):
        rollback.roll_back(step, user, paths=[queued[0].path], confirm="2.8.5")
    assert len(site_patches(prod)) == log


def test_a_paused_rollback_cannot_be_retried_and_an_abort_leaves_the_step_as_it_was(simulator):
    """A rollback paused by the operator (slow updates keep it verifying): retry-failed is refused;
    abort ends the rollback with each site saying what it is left as and the step paused as it was
    before; a new rollback of the same sites is then accepted (nothing left stuck)."""
    prod, step, user, broken, before = failed_step_14(simulator)
    drupal = prod.state.drupal
    drupal.settings = dataclasses.replace(drupal.settings, update_ms=3000)  # Atlas slows down now
    with tasks_not_sent():
        rollback.roll_back(step, user, failed=True, confirm="2.8.5")
    runner = threading.Thread(target=run_engine, args=(step,), daemon=True)
    runner.start()
    wait_for(
        lambda: SiteResult.objects.filter(step=step, rollback=RollbackState.UPDATING).exists(),
        what="a site updating back",
    )
    services.pause(step.plan, user)
    runner.join(60)
    step.refresh_from_db()
    assert step.state == StepState.PAUSED and "during a rollback" in step.message

    with pytest.raises(ActionRefused, match="has a rollback under way"):
        with tasks_not_sent():
            services.retry_failed(step, user)
    services.abort(step.plan, user)

    step.refresh_from_db()
    assert step.state == StepState.PAUSED and step.message.endswith("rollback aborted by the operator")
    assert "rollback" not in step.result
    left = set(SiteResult.objects.filter(step=step, path__in=broken).values_list("rollback", flat=True))
    assert left <= {RollbackState.FAILED, RollbackState.DONE} and RollbackState.FAILED in left
    with tasks_not_sent():
        rollback.roll_back(step, user, failed=True, confirm="2.8.5")
    assert StepRun.objects.get(pk=step.pk).state == StepState.RUNNING
