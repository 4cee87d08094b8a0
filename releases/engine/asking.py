"""Asking Atlas for reports no faster than its command queue runs them (atlas-api.md §3.6).

Each `drush/<id>/execute` queues a run on every site of the item's query, on Atlas's command
queue. Asked every round while that queue is slower than the asks, it would grow without end and
every report would come later. So the next ask waits until the last one has run: until each of
its sites has written a report since Atlas stored the ask's query (counted by Atlas after each
read, no report read), or the count has stopped growing for longer than its runs have taken to
come (at least two rounds; with none of them come yet, the grace period). The sites of a stalled
ask that never reported since (a broken site does not bootstrap to report) are left out of what
later asks wait for during the grace period; they are still asked about.

Atlas's times are whole seconds: a report written in the second an ask's query was stored counts
for it, though it may be the last ask's. So an ask that was not run by the time its reports were
first read (the queue is slow) is followed by the next only a second after it was found run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from atlas.errors import AtlasError
from atlas.types import NEVER

SECOND = 1.0  # Atlas's time resolution


@dataclass
class _Ask:
    target: list[str]  # the sites whose reports the ask waits for
    stored: datetime  # when Atlas stored its query (Atlas's clock, whole seconds)
    grew: float  # when the count last grew (monotonic); at first, when the ask was sent
    count: int = 0  # its sites that have reported since
    gap: float = 0.0  # the longest the count took to grow
    run: float | None = None  # when every site of it was found reported since (monotonic)
    slow: bool = False  # not run at the first look


class Pacing:
    def __init__(self, client, *, poll: float, grace: float) -> None:
        self.client = client
        self.poll = poll
        self.grace = grace
        self._ask: _Ask | None = None
        # Sites that did not report to a stalled ask, until when later asks do not wait for them.
        self.silent: dict[str, float] = {}

    def asked(self, ids: list[str], stored: datetime) -> None:
        now = time.monotonic()
        self.silent = {site_id: until for site_id, until in self.silent.items() if until > now}
        # With every site silent the ask still waits for them all: paced by the stall rule.
        target = [site_id for site_id in ids if site_id not in self.silent] or list(ids)
        self._ask = _Ask(target, stored, now) if target and stored != NEVER else None

    def still_running(self) -> bool:
        """Whether the last ask is still being run by Atlas's command queue (then do not ask)."""
        ask = self._ask
        if ask is not None and ask.run is None:
            self.look()
            ask = self._ask
        if ask is None:
            return False
        if ask.run is None or (ask.slow and time.monotonic() - ask.run < SECOND):
            return True
        self._ask = None
        return False

    def look(self) -> None:
        """Count the last ask's sites that have reported since it (after each read)."""
        ask = self._ask
        if ask is None or ask.run is not None:
            return
        now = time.monotonic()
        try:
            count = self.client.reports_since(ask.target, ask.stored)
        except AtlasError:  # not known: as if it had not grown
            count = ask.count
        if count >= len(ask.target):
            ask.run = now
        elif count > ask.count:
            ask.gap, ask.grew, ask.count = max(ask.gap, now - ask.grew), now, count
        elif self._stalled(ask, now):
            self._ask = None
        ask.slow = ask.slow or ask.run is None

    def _stalled(self, ask: _Ask, now: float) -> bool:
        """The count has not grown since the last look for longer than its runs have taken to
        come: the sites that did not report since are silent, and the next ask may go."""
        patience = max(2 * self.poll, 3 * ask.gap) if ask.count else self.grace
        if now - ask.grew < patience:
            return False
        if ask.count:  # some of its runs came: those that did not are silent for a while
            try:
                quiet = self.client.silent_since(ask.target, ask.stored)
            except AtlasError:
                quiet = set()
            self.silent.update(dict.fromkeys(quiet, now + self.grace))
        return True
