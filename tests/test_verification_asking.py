"""Issue 20 §1 and §7: Atlas is asked for about one report per site, not one per site per round.

Judged from Atlas's side: the simulator's event log counts the `drush atlas-statistics` runs each
site got (`drush_run`) and the statistics items the portal read. Then the window itself, as a unit:
sites that ran long or broke stop taking places, and are still asked about near their deadline.
"""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import pytest

from releases.engine.asking import FRESH_ASKS, AskWindow
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


def test_the_first_round_asks_about_every_site_then_about_as_many_as_ended_and_a_few_more():
    window = AskWindow(poll=0.01)
    waiting = _rows(*"abcdefghijklmnopqrst")
    assert window.pick(waiting, lambda row: False) == waiting

    window.ended(waiting, waiting[6:])  # six of twenty ended: at most halved, to ten
    assert [row.site_id for row in window.pick(waiting[6:], lambda row: False)] == list("ghijklmnop")

    asked = waiting[6:16]
    window.ended(asked, asked[2:])  # two of ten ended: three (two and one more), not fewer than five
    assert window.width == 5
    window.ended(asked[2:6], asked[5:6])  # three of four ended: asking may hold them back
    assert window.width == 8
    # l, asked three times, waits out a backoff: the window is the next eight
    assert [row.site_id for row in window.pick(waiting[11:], lambda row: False)] == list("mnopqrst")


def test_a_site_that_does_not_end_stops_taking_a_place_and_is_asked_again_after_a_backoff():
    window = AskWindow(poll=0.05)
    stuck, *others = _rows("s", "a", "b", "c")
    window.width = 1
    for _ in range(FRESH_ASKS):  # the oldest site, asked about round after round, never ends
        assert window.pick([stuck, *others], lambda row: False)[0] is stuck
        window.ended([stuck], [stuck])

    chosen = window.pick([stuck, *others], lambda row: False)
    assert stuck not in chosen and chosen, "a stuck site kept the window's only place"
    assert window.pick([stuck, *others], lambda row: row is stuck)[0] is stuck, "not asked near its deadline"
    time.sleep(0.06)  # its backoff (one poll after the third ask) has passed
    assert stuck in window.pick([stuck, *others], lambda row: False)


def test_rounds_come_less_often_while_atlas_ends_fewer_sites_than_a_round_could_ask_about():
    """One site ending every 40 ms with a poll of 10 ms: rounds every 8 polls at most (three ends
    would take 120 ms); a round in which nothing ended (a batch's start) changes nothing."""
    window = AskWindow(poll=0.01)
    assert window.interval() == 0.01
    for site_id in "abc":
        time.sleep(0.04)
        row = _rows(site_id)
        window.ended(row, [])
    assert window.interval() == pytest.approx(0.08)
    waiting = _rows("d")
    window.ended(waiting, waiting)
    assert window.interval() == pytest.approx(0.08)

    fast = AskWindow(poll=0.01)
    time.sleep(0.01)
    fast.ended(_rows(*"abcdefghij"), [])  # ten ended in one poll: a round every poll
    assert fast.interval() == 0.01
