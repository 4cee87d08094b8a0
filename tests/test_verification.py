"""Issue 20: a site of an update step succeeds only once it is verified, batches are paced by
Atlas's update queue, PROD's canary holds, and verification survives a worker being replaced.

Every test is judged from Atlas's side: the simulator's events (its update queue's timeline,
the sites' reports and page GETs) and its request log, then the portal's rows. Step 14 runs on a
small PROD (100 sites) with only its first one or two update groups enabled (5 sites each), the
simulator's updates slowed where the pacing must show.

1. A verified step 14: every site verified after Atlas finished updating it.
2. No site is "succeeded" while Atlas is still updating it.
3. At most `max_unverified` sites queued or updating at Atlas at any moment.
4. Batch 2 is PATCHed only after every site of batch 1 is updated and verified.
5. Broken sites fail verification; the failure threshold pauses the step before batch 2.
6. A report with an error-level status (pending updates) is never verified.
7. PROD's canary pauses after batch 1 is verified; nothing is sent until an operator resumes.
8. A worker replaced mid-verification: the new owner verifies, nothing is PATCHed twice.
9. `--verify off` behaves as before: an answered PATCH is a success; no drush, no page GET.
10. Without Atlas's drush role the step pauses; `--verify off` and a resume finish it.
11. A site that Atlas updated cleanly while the step was paused past its deadline is verified
    after the resume (the resume's first round reads reports written before it: no site fails
    on those).
"""

from __future__ import annotations

import math
import os
import re
import statistics
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime

import pytest
import requests

from atlas.client import site_page_url
from atlas.simulator import SimulatorServer
from releases import services
from releases.engine.verify import Verifier
from releases.models import AuditEvent, Environment, SiteResult, StepRun, UpdateGroup
from releases.states import SiteState, StepState
from tests.support import run_engine, sites, tasks_not_sent
from tests.test_engine_faults import release_item, run_inline, wait_for
from tests.test_engine_safety import step_14

pytestmark = pytest.mark.django_db(transaction=True)

RELEASE = "2.8.5"
PROD_SITES = 100  # step 14's first update groups ("installed group 0" and "1") hold 5 sites each
SITE_PATCH = re.compile(r"^/sites/([0-9a-f]{24})/?$")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# -- helpers ------------------------------------------------------------------------------------


def prod_simulator(simulator, **drupal) -> SimulatorServer:
    """A small simulated PROD with the test password; `drupal`: update_workers, update_ms, ..."""
    return simulator("prod", sites=PROD_SITES, password=os.environ["ATLAS_PROD_PASSWORD"], **drupal)


def step_14_in_batches(prod: SimulatorServer, batches: int, **environment) -> tuple[StepRun, object]:
    """PROD pointed at `prod` (its requests recorded), a release whose step 14 is next with only
    its first `batches` update groups enabled, and the operator."""
    step, user = step_14(prod, **{"verify": True, **environment})
    groups = list(
        UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position", "id")
    )
    UpdateGroup.objects.filter(pk__in=[g.pk for g in groups[batches:]]).update(enabled=False)
    prod.injector.record = True
    return step, user


def first_group_paths(prod: SimulatorServer) -> list[str]:
    """The paths of the sites step 14's first batch targets (its first update group), by id."""
    group = UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position", "id")[0]
    matched = sites(prod, status=group.status, update_group=group.update_group)
    return [site["path"] for site in sorted(matched, key=lambda site: str(site["_id"]))]


def rows(step: StepRun, **query) -> list[SiteResult]:
    return list(SiteResult.objects.filter(step=step, **query).order_by("id"))


def batch_ids(step: StepRun, index: int) -> set[str]:
    return set(SiteResult.objects.filter(step=step, batch_index=index).values_list("site_id", flat=True))


def site_patches(prod: SimulatorServer, since: float = 0.0) -> list[tuple[str, float]]:
    """(site id, arrival) of every PATCH of a site that reached Atlas at `since` or later."""
    found = []
    for method, path, arrived, _answered, _status in list(prod.injector.requests):
        match = SITE_PATCH.match(path)
        if method == "PATCH" and match and arrived >= since:
            found.append((match.group(1), arrived))
    return found


def first_at(prod: SimulatorServer, kind: str, site_id: str, after: float = 0.0, **details) -> float | None:
    """When the first `kind` event of the site at or after `after` happened (with `details`)."""
    for event in prod.events.of_kind(kind):
        if event["id"] == site_id and event["at"] >= after:
            if all(event.get(key) == value for key, value in details.items()):
                return event["at"]
    return None


def finished_at(prod: SimulatorServer) -> defaultdict[str, float]:
    """Each site's (last) update_finished time; infinity for a site whose update never ended."""
    return defaultdict(
        lambda: math.inf, {event["id"]: event["at"] for event in prod.events.of_kind("update_finished")}
    )


def stamp(moment: datetime | None) -> float:
    assert moment is not None
    return moment.timestamp()


def queue_depths(prod: SimulatorServer) -> list[int]:
    """Atlas's update queue over time: updates queued or running after each of its events."""
    depth, depths = 0, []
    for event in prod.events:
        if event["kind"] == "update_queued":
            depth += 1
        elif event["kind"] == "update_finished":
            depth -= 1
        else:
            continue
        depths.append(depth)
    return depths


def launch(step: StepRun, user) -> None:
    with tasks_not_sent():
        services.launch(step, user)


def run_in_thread(step: StepRun, owner: str = "test-owner") -> tuple[threading.Thread, list]:
    ended: list = []
    runner = threading.Thread(target=lambda: ended.append(run_engine(step, owner)), daemon=True)
    runner.start()
    return runner, ended


# -- 1. a verified step ------------------------------------------------------------------------


def test_a_verified_step_14_succeeds_with_every_site_verified_after_atlas_updated_it(simulator):
    """PROD, canary off, two batches: the step succeeds; every site has verified_at, reported the
    release's version with no error-level status, and its page answered 200. From the simulator:
    each site's update finished before the step ended and before the site was verified, and the
    site wrote a statistics report and had its page fetched after its update started."""
    prod = prod_simulator(simulator, update_ms=50)
    step, user = step_14_in_batches(prod, 2)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    step.refresh_from_db()
    targeted = rows(step)
    assert len(targeted) == 10 and step.counts()["succeeded"] == 10 and step.counts()["unverified"] == 0
    finished = finished_at(prod)
    for row in targeted:
        assert row.state == SiteState.SUCCEEDED, (row.path, row.message)
        assert row.verified_at is not None, row.path
        assert (row.reported_version, row.reported_error, row.page_status) == (RELEASE, False, 200), row.path
        assert finished[row.site_id] < stamp(step.finished_at), f"{row.path}: updated after the step ended"
        assert finished[row.site_id] < stamp(row.verified_at), f"{row.path}: verified before its update ended"
        assert row.reported_at is not None and stamp(row.patched_at) <= stamp(row.reported_at)
        started = first_at(prod, "update_started", row.site_id)
        assert started is not None
        assert first_at(prod, "statistics_report", row.site_id, after=started) is not None, row.path
        assert first_at(prod, "page_get", row.site_id, after=started, status=200) is not None, row.path
    assert prod.events.of_kind("drush_execute"), "Atlas was never asked for reports"


def test_each_site_s_report_is_read_once_however_long_it_waits(simulator, settings):
    """One update worker at 300 ms a site, five sites in one batch, all five PATCHed at once: the
    last waits about 1.5 s, several rounds of asking for reports (drush runs). From the
    simulator's side, each site's report is returned by exactly one GET of `statistics` (the one
    that shows it updated cleanly): a round reads only the reports that show the release without
    an error-level status, not every waiting site's."""
    settings.ATLAS_VERIFY_LOOK_SECONDS = 300.0  # no look at a waiting site's report in this run
    prod = prod_simulator(simulator, update_workers=1, update_ms=300)
    step, user = step_14_in_batches(prod, 1, max_unverified=5, parallelism=5)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    targeted = {row.site_id for row in rows(step)}
    assert len(targeted) == 5
    runs = Counter(event["id"] for event in prod.events.of_kind("drush_run"))
    assert max(runs[site_id] for site_id in targeted) >= 3, f"no site waited several rounds: {runs}"
    reads = Counter(site for event in prod.events.of_kind("statistics_read") for site in event["sites"])
    assert {site_id: reads[site_id] for site_id in targeted} == dict.fromkeys(targeted, 1)


def test_a_site_waiting_longer_than_the_look_interval_shows_what_it_reported_while_it_waits(
    simulator, settings
):
    """`ATLAS_VERIFY_LOOK_SECONDS` 0.5, one update worker at 700 ms a site, five sites PATCHed at
    once: a site still updating at Atlas, waiting longer than that, has its latest report read and
    recorded (the step page shows it) before it is verified: an earlier version, or the release
    with an error-level status."""
    settings.ATLAS_VERIFY_LOOK_SECONDS = 0.5
    prod = prod_simulator(simulator, update_workers=1, update_ms=700)
    step, user = step_14_in_batches(prod, 1, max_unverified=5, parallelism=5)
    launch(step, user)
    runner, ended = run_in_thread(step)

    seen = wait_for(
        lambda: SiteResult.objects.filter(
            step=step, state=SiteState.UPDATING, reported_at__isnull=False
        ).first(),
        what="a waiting site's report recorded",
    )
    assert seen.reported_version != RELEASE or seen.reported_error is True, (
        seen.reported_version,
        seen.reported_error,
    )
    runner.join(60)
    assert ended == [StepState.SUCCEEDED], step.message


def queued_runs_at_each_execute(prod: SimulatorServer) -> list[int]:
    """At each `drush/<id>/execute` after the first: the drush runs earlier executes had queued on
    Atlas's command queue that had not run yet (an execute not yet prepared counts its sites as
    the last prepared one's)."""
    queued, prepared, executes, last_matched, found = 0, 0, 0, 0, []
    for event in prod.events:
        if event["kind"] == "drush_execute":
            if executes:
                found.append(queued + (executes - prepared) * last_matched)
            executes += 1
        elif event["kind"] == "drush_prepare":
            prepared += 1
            last_matched = event.get("matched", 0)
            queued += last_matched
        elif event["kind"] == "drush_run":
            queued -= 1
    return found


@pytest.mark.parametrize("command_ms", [150, 500])
def test_reports_are_asked_for_no_faster_than_atlas_s_command_queue_runs_them(simulator, command_ms):
    """Atlas's command queue with one worker at 150 or 500 ms a site (0.75 or 2.5 s for the five
    sites of an ask; 500 ms is longer than two rounds), the rounds every 200 ms, five sites
    updating for 3 s: the portal asks again only once the last ask has run (its sites' reports
    counted since it), so Atlas's command queue never holds more than one ask's runs of ours
    (Atlas's whole-second times can make an ask look run up to a second early), and each site is
    asked about a few times, not once a round. Every site is verified."""
    prod = prod_simulator(
        simulator, update_workers=5, update_ms=3000, command_workers=1, command_ms=command_ms
    )
    step, user = step_14_in_batches(prod, 1, max_unverified=5, parallelism=5)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    targeted = {row.site_id for row in rows(step)}
    assert len(targeted) == 5 and step.counts()["succeeded"] == 5
    queued = queued_runs_at_each_execute(prod)
    assert len(queued) >= 2, "the portal asked twice at most: the sites did not wait several rounds"
    # Asked once a round, the queue grows by an ask each round (0, 4, 8, 12, 15, 19, 23, ...).
    assert max(queued) <= len(targeted), f"Atlas's command queue grew ask after ask: {queued}"
    runs = Counter(event["id"] for event in prod.events.of_kind("drush_run"))
    rounds = 3.0 / 0.2
    assert max(runs[site_id] for site_id in targeted) < rounds / 2, runs


def test_a_site_that_never_reports_does_not_slow_the_asks_about_the_others(simulator):
    """Fast command queue, five sites updating for 2.5 s, one of them broken so that it never
    reports: once an ask has stalled on it, the portal leaves it out of what the next asks wait
    for (still asking about it), so the asks go about once a round (200 ms), not one round in
    two or three, and the four others are verified."""
    prod = prod_simulator(simulator, update_workers=5, update_ms=2500)
    step, user = step_14_in_batches(prod, 1, max_unverified=5, parallelism=5, verify_timeout_seconds=5)
    (broken,) = first_group_paths(prod)[:1]
    prod.break_on_update(broken, report="none")

    run_inline(step, user)

    assert sorted(r.state for r in rows(step)) == sorted([SiteState.FAILED] + [SiteState.SUCCEEDED] * 4)
    asks = [event["at"] for event in prod.events.of_kind("drush_execute")]
    updated = min(event["at"] for event in prod.events.of_kind("update_finished"))
    gaps = [b - a for a, b in zip(asks, asks[1:], strict=False) if a >= asks[0] + 1.0 and b <= updated]
    assert len(gaps) >= 3, asks
    assert statistics.median(gaps) < 0.3, f"asks every {statistics.median(gaps):.2f} s: {gaps}"


def test_a_silent_site_left_alone_is_asked_about_at_the_grace_period_s_pace(simulator):
    """One drush worker at 300 ms a run, five sites updating for 1 s, one broken so that it never
    reports, a 6 s deadline: once the four others are verified, only the silent site waits. The
    portal still asks about it, but paced (every grace period, 2 s here), not once a round
    (200 ms): the command queue never holds more than an ask's runs."""
    prod = prod_simulator(simulator, update_workers=5, update_ms=1000, command_workers=1, command_ms=300)
    step, user = step_14_in_batches(prod, 1, max_unverified=5, parallelism=5, verify_timeout_seconds=6)
    (broken,) = first_group_paths(prod)[:1]
    prod.break_on_update(broken, report="none")

    run_inline(step, user)

    healthy = [row for row in rows(step) if row.path != broken]
    assert [row.state for row in healthy] == [SiteState.SUCCEEDED] * 4
    alone = max(stamp(row.verified_at) for row in healthy)
    (failed,) = [row for row in rows(step) if row.path == broken]
    asks = [event["at"] for event in prod.events.of_kind("drush_execute") if alone < event["at"]]
    asks = [at for at in asks if at < stamp(failed.finished_at)]
    waited = stamp(failed.finished_at) - alone
    assert waited > 2, f"the silent site waited alone only {waited:.1f} s: the case is not shown"
    assert len(asks) <= waited / 2 + 1, f"{len(asks)} asks in {waited:.1f} s about one silent site"
    assert max(queued_runs_at_each_execute(prod)) <= 5


# -- 2. no site succeeded while Atlas updates it ----------------------------------------------


def test_no_site_is_succeeded_while_atlas_is_still_updating_it(simulator):
    """Slow updates (300 ms, two workers): polled while the step runs, sites are counted
    unverified at some point, and every site the portal calls succeeded has already had its
    update_finished at Atlas (the events are read after the rows, so an update that ended
    between the two reads is counted as finished: never a false alarm)."""
    prod = prod_simulator(simulator, update_workers=2, update_ms=300)
    step, user = step_14_in_batches(prod, 2)
    launch(step, user)

    runner, ended = run_in_thread(step)
    unverified_seen, early = 0, []
    while runner.is_alive():
        unverified_seen = max(unverified_seen, step.counts()["unverified"])
        succeeded = set(
            SiteResult.objects.filter(step=step, state=SiteState.SUCCEEDED).values_list("site_id", flat=True)
        )
        done = set(prod.events.ids("update_finished"))  # read after the rows
        early += sorted(succeeded - done)
        time.sleep(0.05)
    runner.join()

    assert ended == [StepState.SUCCEEDED], StepRun.objects.get(pk=step.pk).message
    assert unverified_seen > 0, "no site was ever seen updating at Atlas"
    assert early == [], f"sites succeeded before Atlas finished updating them: {sorted(set(early))}"
    finished = finished_at(prod)
    for row in rows(step):
        assert row.state == SiteState.SUCCEEDED
        assert finished[row.site_id] < stamp(row.verified_at), row.path


# -- 3. at most K sites updating at Atlas ------------------------------------------------------


def test_queued_and_running_updates_never_exceed_max_unverified(simulator):
    """One update worker at 100 ms a site, `max_unverified` 3, parallelism 4: from Atlas's timeline
    (update_queued less update_finished), never more than 3 updates queued or running, and 3 is
    reached (the window is used, not merely respected)."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=100)
    step, user = step_14_in_batches(prod, 2, max_unverified=3, parallelism=4)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    depths = queue_depths(prod)
    assert len(prod.events.of_kind("update_queued")) == 10
    assert max(depths) <= 3, f"Atlas had up to {max(depths)} updates queued or running: {depths}"
    assert max(depths) == 3, f"the window was never used: {depths}"
    assert depths[-1] == 0
    assert Counter(site_id for site_id, _ in site_patches(prod)) == Counter(
        {site_id: 1 for site_id in batch_ids(step, 0) | batch_ids(step, 1)}
    )


def test_sites_failed_at_their_deadline_keep_their_slot_until_atlas_ran_their_update(simulator):
    """One update worker at 1.5 s a site, `max_unverified` 2, a 1 s deadline: sites fail
    verification while their update is still queued at Atlas. They keep counting against the
    limit until a report shows their update ran, so Atlas never holds more than 2 updates queued
    or running (the review found 3 when a failed site freed its slot at once)."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=1500)
    step, user = step_14_in_batches(
        prod, 1, max_unverified=2, parallelism=2, verify_timeout_seconds=1, failure_threshold_count=100
    )

    run_inline(step, user)

    depths = queue_depths(prod)
    assert len(prod.events.of_kind("update_queued")) == 5
    assert max(depths) <= 2, f"Atlas had up to {max(depths)} updates queued or running: {depths}"
    assert rows(step, state=SiteState.FAILED), "no site failed at its deadline: the case is not shown"


def test_a_resumed_step_keeps_the_slots_of_sites_failed_at_their_deadline(simulator):
    """As above (updates of 3 s), but the step is paused once a site has failed at its deadline and resumed on
    another worker: the new run reads those sites back from their rows and still never lets Atlas
    hold more than 2 updates queued or running (in memory only, their slots were lost)."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=3000)
    step, user = step_14_in_batches(
        prod, 1, max_unverified=2, parallelism=2, verify_timeout_seconds=1, failure_threshold_count=100
    )
    launch(step, user)
    runner, _ = run_in_thread(step)
    wait_for(lambda: rows(step, state=SiteState.FAILED), what="a site failed at its deadline")
    services.pause(step.plan, user)
    runner.join(60)
    assert StepRun.objects.get(pk=step.pk).state == StepState.PAUSED

    with tasks_not_sent():
        services.resume_step(StepRun.objects.get(pk=step.pk), user)
    run_engine(step, owner="second-worker")

    depths = queue_depths(prod)
    assert len(prod.events.of_kind("update_queued")) == 5
    assert max(depths) <= 2, f"Atlas had up to {max(depths)} updates queued or running: {depths}"


# -- 4. batch n+1 waits for batch n ------------------------------------------------------------


def test_no_site_of_batch_2_is_patched_before_every_site_of_batch_1_is_updated_and_verified(simulator):
    """Updates of 300 ms on one worker (batch 1 keeps Atlas busy 1.5 s after its PATCHes were
    answered): the first PATCH of a batch-2 site reaches Atlas only after every batch-1 site's
    update_finished event and after the portal recorded each of them as verified."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=300)
    step, user = step_14_in_batches(prod, 2)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    first, second = batch_ids(step, 0), batch_ids(step, 1)
    assert len(first) == 5 and len(second) == 5
    patches = site_patches(prod)
    assert {site_id for site_id, _ in patches} == first | second
    batch_2_starts = min(arrived for site_id, arrived in patches if site_id in second)
    finished = finished_at(prod)
    assert max(finished[site_id] for site_id in first) < batch_2_starts, (
        "batch 2 PATCHed while batch 1 updated"
    )
    queued = [e["at"] for e in prod.events.of_kind("update_queued") if e["id"] in second]
    assert min(queued) > max(finished[site_id] for site_id in first)
    batch_1 = rows(step, batch_index=0)
    assert all(row.state == SiteState.SUCCEEDED and row.verified_at is not None for row in batch_1)
    assert max(stamp(row.verified_at) for row in batch_1) < batch_2_starts, (
        "batch 2 PATCHed before batch 1 verified"
    )


# -- 5. broken sites and the failure threshold -------------------------------------------------


def test_broken_sites_fail_verification_and_the_threshold_pauses_the_step_before_batch_2(simulator):
    """Two sites of batch 1 break on their update (their report looks clean, their page answers
    500); verification deadline 4 s (the healthy sites verify in about 2), failure threshold 2
    sites (so the pause waits for both, however far apart their PATCHes and so their deadlines
    were). The step pauses on the failure threshold; both sites failed at the deadline with a
    message naming verification and the 500; their pages were fetched (500) after their update
    finished; the batch's other sites succeeded; no site of batch 2 was PATCHed or queued."""
    prod = prod_simulator(simulator, update_ms=50)
    step, user = step_14_in_batches(prod, 2, verify_timeout_seconds=4, failure_threshold_count=2)
    broken = first_group_paths(prod)[:2]
    prod.break_on_update(*broken, report="clean")

    assert run_inline(step, user) == StepState.PAUSED, step.message

    step.refresh_from_db()
    assert step.message.startswith("failure threshold"), step.message
    failed = rows(step, state=SiteState.FAILED)
    assert sorted(row.path for row in failed) == sorted(broken)
    finished = finished_at(prod)
    for row in failed:
        assert row.batch_index == 0 and row.verified_at is None
        assert "verification" in row.message and "500" in row.message, row.message
        assert row.page_status == 500
        assert stamp(row.finished_at) - stamp(row.patched_at) >= 4  # failed at the deadline
        assert first_at(prod, "page_get", row.site_id, after=finished[row.site_id], status=500)
    assert all(
        row.state == SiteState.SUCCEEDED for row in rows(step, batch_index=0) if row.path not in broken
    )
    second = batch_ids(step, 1)
    assert second and not [site_id for site_id, _ in site_patches(prod) if site_id in second]
    assert not [e for e in prod.events.of_kind("update_queued") if e["id"] in second]
    assert all(row.state == SiteState.PENDING for row in rows(step, batch_index=1))


def test_retrying_sites_that_failed_verification_verifies_them_again_and_updates_nothing_again(simulator):
    """After two broken sites failed verification, `release retry-failed`: each is read again (on
    the release profile already) and verified again, never PATCHed onto the profile a second time:
    Atlas queued exactly one update for each (its forward update may still be queued, §3.6).
    Failure threshold 2: the step pauses once both have failed, however far apart their deadlines
    (with 1, a round between the two deadlines paused it with only the first one failed)."""
    prod = prod_simulator(simulator, update_ms=50)
    step, user = step_14_in_batches(prod, 1, verify_timeout_seconds=3, failure_threshold_count=2)
    broken = first_group_paths(prod)[:2]
    prod.break_on_update(*broken, report="clean")
    assert run_inline(step, user) == StepState.PAUSED, step.message
    failed = {row.site_id for row in rows(step, state=SiteState.FAILED)}
    assert len(failed) == 2

    retried = time.time()
    with tasks_not_sent():
        services.retry_failed(StepRun.objects.get(pk=step.pk), user)
    run_engine(step, owner="retry")

    # Read again, not PATCHed again (not even a PATCH that a stale ETag would have Atlas refuse).
    assert not [site_id for site_id, _ in site_patches(prod, since=retried) if site_id in failed]
    queued = [e["id"] for e in prod.events.of_kind("update_queued") if e["id"] in failed]
    assert sorted(queued) == sorted(failed), "each broken site's update was queued once, not again"
    for row in rows(step, site_id__in=failed):
        assert row.state == SiteState.FAILED and "verification" in row.message, row.message
        assert row.page_status == 500


# -- 6. a report with an error-level status is never verified ----------------------------------


def test_a_site_reporting_an_error_level_status_is_never_verified_and_fails_at_its_deadline(simulator):
    """One site of the only batch breaks on its update with an error-level report; deadline 4 s.
    The site reported the release's version with the error status after its update finished, yet
    is never verified: it fails at the deadline with "verification" and "error-level" in its
    message; the batch's other sites succeed."""
    prod = prod_simulator(simulator, update_ms=50)
    step, user = step_14_in_batches(prod, 1, verify_timeout_seconds=4)
    (broken,) = first_group_paths(prod)[:1]
    prod.break_on_update(broken, report="error")

    state = run_inline(step, user)

    step.refresh_from_db()
    assert state in (StepState.PAUSED, StepState.FAILED), step.message
    (row,) = rows(step, state=SiteState.FAILED)
    assert row.path == broken and row.verified_at is None
    assert "verification" in row.message and "error-level" in row.message, row.message
    assert (row.reported_version, row.reported_error) == (RELEASE, True)
    assert stamp(row.finished_at) - stamp(row.patched_at) >= 4
    update_ended = finished_at(prod)[row.site_id]
    assert first_at(prod, "statistics_report", row.site_id, after=update_ended, version=RELEASE, error=True)
    assert [r.state for r in rows(step) if r.pk != row.pk] == [SiteState.SUCCEEDED] * 4


def test_pending_database_updates_are_never_verified_even_with_a_working_page(simulator):
    """The release item's deploy.update_database is off, so `updb` never runs: every site reports
    the release's version with pending updates (an error-level status) while its page answers 200.
    None is verified; each fails at the 2 s deadline with "verification" and "error-level"."""
    prod = prod_simulator(simulator, update_ms=20)
    step, user = step_14_in_batches(prod, 1, verify_timeout_seconds=2)
    item = release_item(prod)
    with prod.lock:
        prod.db["code"].update_one({"_id": item["_id"]}, {"$set": {"deploy.update_database": False}})

    state = run_inline(step, user)

    step.refresh_from_db()
    assert state in (StepState.PAUSED, StepState.FAILED), step.message
    targeted = rows(step)
    assert len(targeted) == 5
    finished = finished_at(prod)
    for row in targeted:
        assert row.state == SiteState.FAILED and row.verified_at is None, (row.path, row.state)
        assert "verification" in row.message and "error-level" in row.message, row.message
        assert (row.reported_version, row.reported_error) == (RELEASE, True)
        assert first_at(prod, "statistics_report", row.site_id, after=finished[row.site_id], error=True)
        page = requests.get(site_page_url(prod.site_url, row.path), timeout=5)
        assert page.status_code == 200  # the page works: only the report tells


# -- 7. the canary --------------------------------------------------------------------------------


def test_the_canary_holds_after_batch_1_is_verified_until_an_operator_resumes(simulator):
    """PROD with its canary on, two batches: the step pauses once batch 1 is verified, saying
    "canary"; while it waits nothing is PATCHed; `release resume` (audited) lets it go on and it
    succeeds, no site PATCHed twice."""
    prod = prod_simulator(simulator, update_ms=50)
    step, user = step_14_in_batches(prod, 2, canary=True)

    assert run_inline(step, user) == StepState.PAUSED, step.message

    step.refresh_from_db()
    assert step.message.startswith("canary"), step.message
    first, second = batch_ids(step, 0), batch_ids(step, 1)
    assert all(r.state == SiteState.SUCCEEDED and r.verified_at for r in rows(step, batch_index=0))
    assert all(r.state == SiteState.PENDING for r in rows(step, batch_index=1))
    assert {site_id for site_id, _ in site_patches(prod)} == first
    paused_at = time.time()
    time.sleep(1)
    waited = [entry for entry in prod.injector.requests if entry[2] >= paused_at]
    assert waited == [], f"requests reached Atlas while the canary waited: {waited}"

    with tasks_not_sent():
        services.resume(step.plan, user)
    assert AuditEvent.objects.filter(action="resume", step=step, username=user.username).exists()
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED

    step.refresh_from_db()
    assert step.counts()["succeeded"] == 10
    assert Counter(site_id for site_id, _ in site_patches(prod)) == Counter(dict.fromkeys(first | second, 1))


# -- 8. a worker replaced mid-verification ------------------------------------------------------


def test_a_worker_replaced_while_its_sites_update_is_followed_without_any_re_patch(simulator, monkeypatch):
    """Slow updates (300 ms, one worker). Once sites of batch 1 are recorded as updating, the
    first worker's lease is no longer surely its own (as when a renewal is late) and its run stops
    as a lost lease; the watchdog frees the step and a second owner runs it. It succeeds; every
    site was PATCHed exactly once; the second run read statistics and PATCHed none of the sites
    that were updating when the first stopped (some still updating at Atlas then)."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=300)
    step, user = step_14_in_batches(prod, 2)
    real_poll = Verifier.poll
    taken: dict = {}

    def poll(self, flush=None):
        ran = real_poll(self, flush)
        if ran and not taken and self.waiting > 0:
            taken["updating"] = set(
                SiteResult.objects.filter(step=step, state=SiteState.UPDATING).values_list(
                    "site_id", flat=True
                )
            )
            taken["finished"] = set(prod.events.ids("update_finished"))
            self.ctx._valid_until = 0.0  # the lease is no longer surely ours: stop as a lost lease
        return ran

    monkeypatch.setattr(Verifier, "poll", poll)
    assert run_inline(step, user, owner="first") is None  # stopped as a lost lease
    monkeypatch.setattr(Verifier, "poll", real_poll)
    assert taken["updating"], "no site was updating when the worker stopped"
    assert taken["updating"] - taken["finished"], "every update had ended already: not mid-verification"
    StepRun.objects.filter(pk=step.pk).update(lease_owner="", lease_expires_at=None)  # as the watchdog
    second_run = time.time()

    assert run_engine(step, owner="second") == StepState.SUCCEEDED

    step.refresh_from_db()
    assert step.counts()["succeeded"] == 10
    assert Counter(site_id for site_id, _ in site_patches(prod)) == Counter(
        dict.fromkeys(batch_ids(step, 0) | batch_ids(step, 1), 1)
    ), "a site was PATCHed twice (or never)"
    again = {site_id for site_id, _ in site_patches(prod, since=second_run)}
    assert not again & taken["updating"], (
        f"the second owner re-PATCHed updating sites: {again & taken['updating']}"
    )
    reads = [
        e
        for e in prod.injector.requests
        if e[0] == "GET" and e[1].startswith("/statistics") and e[2] >= second_run
    ]
    assert reads, "the second owner never read the sites' reports"
    for row in rows(step, site_id__in=taken["updating"]):
        assert row.state == SiteState.SUCCEEDED and stamp(row.verified_at) > second_run


# -- 9. verification off --------------------------------------------------------------------------


def test_with_verification_off_an_answered_patch_is_a_success_and_atlas_is_not_asked(simulator):
    """`environment set PROD --verify off`: step 14 succeeds as soon as Atlas answered its PATCHes,
    while Atlas is still updating its sites (one worker, 600 ms a site); the sites are succeeded
    with no verified_at, and the simulator saw no drush execute, no report asked, no page GET."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=600)
    step, user = step_14_in_batches(prod, 2, verify=False)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    step.refresh_from_db()
    targeted = rows(step)
    assert len(targeted) == 10
    assert all(row.state == SiteState.SUCCEEDED and row.verified_at is None for row in targeted)
    assert step.counts()["unverified"] == 0
    assert len(prod.events.of_kind("update_queued")) == 10
    unfinished = {e["id"] for e in prod.events.of_kind("update_queued")} - set(
        prod.events.ids("update_finished")
    )
    assert unfinished, "the step waited for Atlas's updates"
    assert prod.events.of_kind("drush_execute") == []
    assert prod.events.of_kind("statistics_report") == []
    assert prod.events.of_kind("page_get") == []


# -- 10. an account without the drush role -------------------------------------------------------


def test_without_the_drush_role_the_step_pauses_and_verify_off_then_finishes_it_without_re_patching(
    simulator,
):
    """Atlas refuses `POST /drush/<id>/execute` (403: the account lacks the drush role): the step
    pauses saying verification is impossible, the sites already PATCHed stay updating, batch 2
    is not PATCHed, and Atlas ran no drush and served no page to the portal. Turning
    verification off and resuming finishes the step: those sites count as done unverified, the
    rest are PATCHed, and no site is PATCHed twice."""
    prod = prod_simulator(simulator, update_ms=50)
    step, user = step_14_in_batches(prod, 2)
    prod.deny_drush("release-portal")

    assert run_inline(step, user) == StepState.PAUSED, step.message

    step.refresh_from_db()
    assert "verification is impossible" in step.message and "--verify off" in step.message, step.message
    updating = rows(step, state=SiteState.UPDATING)
    assert updating and {row.site_id for row in updating} == {site_id for site_id, _ in site_patches(prod)}
    assert not batch_ids(step, 1) & {site_id for site_id, _ in site_patches(prod)}
    assert [e for e in prod.injector.requests if e[0] == "POST" and e[1].endswith("/execute")][-1][4] == 403
    assert prod.events.of_kind("drush_execute") == [] and prod.events.of_kind("page_get") == []

    Environment.objects.filter(name="PROD").update(verify=False)  # environment set PROD --verify off
    with tasks_not_sent():
        services.resume(step.plan, user)
    assert run_engine(step, owner="resumed") == StepState.SUCCEEDED

    assert Counter(site_id for site_id, _ in site_patches(prod)) == Counter(
        dict.fromkeys(batch_ids(step, 0) | batch_ids(step, 1), 1)
    )
    for row in rows(step, pk__in=[row.pk for row in updating]):
        assert row.state == SiteState.SUCCEEDED and row.verified_at is None
        assert row.message == "not verified: verification was turned off"


# -- the deadline after a stop ---------------------------------------------------------------------


def test_a_site_updated_cleanly_while_the_step_was_paused_is_verified_after_the_resume(
    simulator, monkeypatch
):
    """Updates of 600 ms on one worker, deadline 4 s. The operator pauses the step just after its
    first site's PATCH was answered (its only report then shows the old version or pending
    updates); Atlas finishes that update cleanly during the pause, which outlasts the deadline.
    After the resume the portal asks the site for a report, and the site writes a clean one: the
    site is verified, as it works (it once failed in the resume's first round, on the report
    written while it was still updating)."""
    prod = prod_simulator(simulator, update_workers=1, update_ms=600)
    # 4 s: the batch's other four sites, PATCHed after the resume, queue behind one worker (2.4 s).
    step, user = step_14_in_batches(prod, 1, verify_timeout_seconds=4)
    real_poll = Verifier.poll
    paused: dict = {}

    def poll(self, flush=None):
        ran = real_poll(self, flush)
        if ran and not paused and self.waiting > 0:
            paused["updating"] = set(
                SiteResult.objects.filter(step=step, state=SiteState.UPDATING).values_list(
                    "site_id", flat=True
                )
            )
            services.pause(step.plan, user)
            self.ctx.requested_now()  # the next look at the operator's request sees it
        return ran

    monkeypatch.setattr(Verifier, "poll", poll)
    if run_inline(step, user) != StepState.PAUSED or not paused.get("updating"):
        pytest.fail(f"the step did not pause with sites updating: {StepRun.objects.get(pk=step.pk).message}")
    monkeypatch.setattr(Verifier, "poll", real_poll)
    if not prod.wait_for_updates(30):
        pytest.fail("Atlas never finished its updates")
    time.sleep(4.5)  # the pause outlasts the deadline
    finished = finished_at(prod)
    for site_id in paused["updating"]:
        ended = [e for e in prod.events.of_kind("update_finished") if e["id"] == site_id]
        if not ended or ended[-1]["broken"] or ended[-1]["pending"]:
            pytest.fail(f"{site_id}: its update did not end cleanly: {ended}")
    resumed = time.time()
    with tasks_not_sent():
        services.resume(step.plan, user)

    state = run_engine(step, owner="resumed")

    for row in rows(step, site_id__in=paused["updating"]):
        clean = first_at(prod, "statistics_report", row.site_id, after=resumed, version=RELEASE, error=False)
        assert finished[row.site_id] < resumed and clean, "the site works: updated, then reported cleanly"
        assert row.state == SiteState.SUCCEEDED, f"{row.path}: {row.message}"
    assert state == StepState.SUCCEEDED, [
        (r.path, r.message, r.patched_at, r.reported_at) for r in rows(step) if r.state != SiteState.SUCCEEDED
    ]
