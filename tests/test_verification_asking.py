"""Issue 20 §1 and §7: Atlas is asked for about one report per site, not one per site per round.

Judged from Atlas's side: the simulator's event log counts the `drush atlas-statistics` runs each
site got (`drush_run`) and the statistics items the portal read. Then the window itself, as a unit:
sites that ran long or broke stop taking places, and are still asked about near their deadline.
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest

from releases.engine.asking import FRESH_ASKS, QUEUED_ASKS, AskWindow
from releases.states import StepState
from tests.test_engine_faults import run_inline
from tests.test_verification import batch_ids, prod_simulator, rows, site_patches, step_14_in_batches


@pytest.mark.django_db(transaction=True)
def test_a_slow_update_queue_gets_about_one_report_run_per_site(simulator, settings):
    """One update worker at 250 ms a site and `max_unverified` 4: each site waits about a second at
    Atlas, five polls of 0.2 s. Asking about every waiting site each round ran drush about four
    times a site; the window asks about the oldest few, which end next."""
    settings.ATLAS_VERIFY_POLL_SECONDS = 0.2
    prod = prod_simulator(simulator, update_workers=1, update_ms=250)
    step, user = step_14_in_batches(prod, 2, max_unverified=4, parallelism=4)

    assert run_inline(step, user) == StepState.SUCCEEDED, step.message

    targeted = {row.site_id for row in rows(step)}
    assert targeted == batch_ids(step, 0) | batch_ids(step, 1) and len(targeted) == 10
    assert Counter(site for site, _ in site_patches(prod)) == Counter({site: 1 for site in targeted})
    runs = Counter(event["id"] for event in prod.events.of_kind("drush_run") if event["id"] in targeted)
    assert set(runs) == targeted, "a site was verified without a report asked for it"
    per_site = sum(runs.values()) / len(targeted)
    assert per_site <= 2.0, f"{per_site:.1f} drush runs per site: {sorted(runs.values())}"


def _rows(*ids):
    return [SimpleNamespace(site_id=site_id) for site_id in ids]


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_round_asks_about_every_site_then_about_as_many_as_ended_and_a_few_more():
    clock = Clock()
    window = AskWindow(poll=1.0, clock=clock)
    waiting = _rows(*"abcdefghijklmnopqrst")
    assert window.pick(waiting, lambda row: False) == waiting

    clock.now += 1
    window.ended(waiting, waiting[6:])  # six of twenty ended: at most halved, to ten
    assert [row.site_id for row in window.pick(waiting[6:], lambda row: False)] == list("ghijklmnop")

    asked = waiting[6:16]
    clock.now += 1
    window.ended(asked, asked[2:])  # two of ten ended: at most halved, to five
    assert window.width == 5
    clock.now += 1
    window.ended(asked[2:6], asked[5:6])  # three of four ended: asking may hold them back
    assert window.width == 8
    assert [row.site_id for row in window.pick(waiting[11:], lambda row: False)] == list("lmnopqrs")

    clock.now += 1
    asked = waiting[11:19]
    window.ended(asked, asked, started=asked)  # nothing ended, all running: no news, no change
    assert window.width == 8
    clock.now += 1
    window.ended(asked, asked, started=asked[:2])  # six still queued: the two running and one more,
    pace = math.ceil(1.25 * window.rate * window.interval())  # unless more end a round at the pace
    assert 3 < pace < 8 and window.width == pace


def test_a_batch_s_last_few_sites_do_not_narrow_the_window_and_the_pace_sets_its_least_width():
    clock = Clock()
    window = AskWindow(poll=1.0, clock=clock)
    waiting = _rows(*"abcdefghijklmnopqrst")
    window.pick(waiting, lambda row: False)
    clock.now += 1
    window.ended(waiting, waiting[16:])  # sixteen of twenty ended: the window may have held them
    assert window.width == 40

    tail = _rows("x", "y")
    window.pick(tail, lambda row: False)  # a batch's last two, both asked: the window held none back
    clock.now += 1
    window.ended(tail, tail[1:])
    assert window.width == 40, "a batch's tail narrowed the window for the next batch"

    slow = AskWindow(poll=1.0, clock=clock)
    many = _rows(*"abcdefghijklmnopqrst")
    slow.pick(many, lambda row: False)
    clock.now += 1
    slow.ended(many, many[1:])  # one ended: narrowed, but not below half
    assert slow.width == 10


def test_a_site_that_does_not_end_stops_taking_a_place_and_is_asked_again_after_a_backoff():
    clock = Clock()
    window = AskWindow(poll=1.0, clock=clock)
    stuck, *others = _rows("s", "a", "b", "c")
    window.width = 1
    for _ in range(FRESH_ASKS):  # the oldest site, asked about round after round, runs on
        assert window.pick([stuck, *others], lambda row: False)[0] is stuck
        clock.now += 1
        window.ended([stuck], [stuck], started=[stuck])

    chosen = window.pick([stuck, *others], lambda row: False)
    assert stuck not in chosen and chosen, "a stuck site kept the window's only place"
    assert window.pick([stuck, *others], lambda row: row is stuck)[0] is stuck, "not asked near its deadline"
    clock.now += 1  # its backoff (one poll after the third ask) has passed
    assert stuck in window.pick([stuck, *others], lambda row: False)


def test_rounds_come_less_often_while_atlas_ends_fewer_sites_than_a_round_could_ask_about():
    """One site ending every 4 s with a poll of 1 s: a round every 8 polls at most (three ends
    would take 12 s); a round in which nothing ended (a batch's start) changes nothing."""
    clock = Clock()
    window = AskWindow(poll=1.0, clock=clock)
    assert window.interval() == 1.0
    for site_id in "abc":
        clock.now += 4
        window.ended(_rows(site_id), [])
    # Three ends over the rounds' time, each counted at most 8 polls (4 s): 3 / 12 s.
    assert window.interval() == pytest.approx(8.0)
    clock.now += 1
    waiting = _rows("d")
    window.ended(waiting, waiting)
    assert window.interval() == pytest.approx(8.0)

    fast = AskWindow(poll=1.0, clock=clock)
    clock.now += 1
    fast.ended(_rows(*"abcdefghij"), [])  # ten ended in one poll: a round every poll
    assert fast.interval() == 1.0


def test_a_site_still_queued_at_atlas_keeps_its_place_longer_than_one_that_started():
    """Atlas runs updates about in PATCH order: the oldest site, its report still showing it
    queued, is next to start; it keeps its place for `QUEUED_ASKS` rounds, not `FRESH_ASKS`."""
    clock = Clock()
    window = AskWindow(poll=1.0, clock=clock)
    queued, *others = _rows("q", "a", "b")
    window.width = 1
    for round_ in range(QUEUED_ASKS):
        assert window.pick([queued, *others], lambda row: False)[0] is queued, f"round {round_ + 1}"
        clock.now += 1
        window.ended([queued], [queued])
    assert queued not in window.pick([queued, *others], lambda row: False)
