"""Which waiting sites a verification round asks Atlas to report on (atlas-api.md §3.6).

Each site asked costs Atlas a `drush atlas-statistics` run on its command queue and the portal a
statistics item read. Asking about every site waiting, every round, costs that once per round a
site waits: at real update times (a minute and more) tens of runs per site. Atlas's update queue
runs sites about in the order their PATCHes arrived, so the oldest waiting sites are the ones that
end next. A round therefore asks about the oldest `width` sites, `width` being about as many as
ended in the round before and a few more, so that most sites are asked about once, soon after
they ended:

- a round in which most sites asked (three in four) had ended doubles the width (the asking may
  be what holds the sites back); one in which fewer had ended at most halves it;
- a site asked about `FRESH_ASKS` times since its update started without ending (running long,
  or broken: its update failed or its page answers 500), or `QUEUED_ASKS` times while its report
  still showed it queued, stops taking a place in the window: it is asked about again after a
  backoff of up to `MAX_BACKOFF` polls, and every round once its deadline is near, so it still
  fails at its deadline with what was last seen;
- the first round asks about every site waiting (nothing is known yet);
- rounds come every poll, or less often while fewer than `PER_ROUND` sites end in a poll (Atlas
  ending one site every few polls, as at real update times): a round then waits until about
  `PER_ROUND` sites can have ended at the rate they have been ending, never more than
  `MAX_BACKOFF` polls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FRESH_ASKS = 3  # asks of a site whose report shows its update started, before its backoff
QUEUED_ASKS = 9  # ... whose report shows it still queued (or did not come): FIFO puts it first
MAX_BACKOFF = 8
PER_ROUND = 3


_FRESH = FRESH_ASKS * QUEUED_ASKS  # an ask costs a site QUEUED_ASKS or FRESH_ASKS of these


@dataclass
class _Asked:
    spent: int = 0  # in units of 1/_FRESH of its asks before a backoff
    next_at: float = 0.0

    @property
    def fresh(self) -> bool:
        return self.spent < _FRESH


class AskWindow:
    def __init__(self, poll: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.poll = poll
        self.clock = clock
        self.width: int | None = None  # None: ask about every site waiting
        self.rate: float | None = None  # sites ended a second
        self._asked: dict[str, _Asked] = {}
        self._binding = True
        self._last = self.clock()
        self._interval = poll
        self._ended, self._active = 0, 0.0  # sites ended, seconds of rounds, over the step

    def interval(self) -> float:
        """Seconds until the next round asks."""
        return self._interval

    def pick(self, rows: Sequence, near_deadline: Callable[[object], bool]) -> list:
        """The rows to ask about now, from `rows` oldest first (by when Atlas answered the PATCH)."""
        now = self.clock()
        fresh = [row for row in rows if self._seen(row).fresh]
        head = fresh if self.width is None else fresh[: self.width]
        # Whether the window held sites back (the first round's "all" is a guess too).
        self._binding = self.width is None or len(fresh) > self.width
        chosen = {id(row) for row in head}
        return [
            row
            for row in rows
            if id(row) in chosen
            or (not self._seen(row).fresh and (now >= self._seen(row).next_at or near_deadline(row)))
        ]

    def ended(self, asked: Sequence, still_waiting: Sequence, seen_ended=(), started=()) -> None:
        """After a round's read: `asked` the rows it asked about, `still_waiting` those of them
        not verified or failed, `seen_ended` those of these whose report shows their update ended
        (their page did not answer 200 yet): they need no place in the window; `started` those
        whose report shows their update started (the release's version, pending updates)."""
        now = self.clock()
        waiting, done_at_atlas = {id(row) for row in still_waiting}, {id(row) for row in seen_ended}
        running = {id(row) for row in started}
        in_window = 0
        for row in asked:
            seen = self._seen(row)
            in_window += seen.fresh
            seen.spent += QUEUED_ASKS if id(row) in running else FRESH_ASKS
            if id(row) in done_at_atlas:
                seen.spent = max(seen.spent, _FRESH)
            if not seen.fresh:
                backoff = 2 ** ((seen.spent - _FRESH) // QUEUED_ASKS)
                seen.next_at = now + min(backoff, MAX_BACKOFF) * self.poll
            if id(row) not in waiting:
                del self._asked[row.site_id]
        ended = len(asked) - len(waiting) + len(done_at_atlas)
        self._pace(ended, now)
        self._resize(in_window, ended, started=len(running))

    def _resize(self, in_window: int, ended: int, started: int) -> None:
        """Widen when most of those asked had ended; narrow only when the window held sites back
        (a batch's last few sites say nothing of how many end a round), or, before any ended,
        to those whose update started (the others are queued behind them); never below what ends
        in a round at the rate sites have been ending (more end in a round than `max_unverified`
        when the poll is long against Atlas's updates: then every site waiting is asked about)."""
        if not in_window:
            return
        if not ended:  # no news of Atlas's pace (a step's or a batch's start), but of its queue
            if started < in_window:
                self.width = min(self.width or in_window, started + 1)
        elif 4 * ended >= 3 * in_window:
            self.width = max(self.width or 0, 2 * in_window)
        elif self._binding:  # as many as ended and a few more; at most halved in a round
            self.width = max(ended + max(1, ended // 4), in_window // 2)
        if self.rate and self.width is not None:
            self.width = max(self.width, math.ceil(1.25 * self.rate * self._interval))

    def _pace(self, ended: int, now: float) -> None:
        """Rounds every poll, or every `PER_ROUND` ends at the rate sites have ended over the
        step's rounds (a long run: one batch's last few ends, or its start, say little of Atlas's
        pace); the time between batches, when no round ran, is not counted."""
        elapsed, self._last = min(now - self._last, MAX_BACKOFF * self.poll), now
        self._active += elapsed
        self._ended += ended
        if self._ended:
            self.rate = self._ended / max(self._active, 1e-3)
            self._interval = min(max(self.poll, PER_ROUND / self.rate), MAX_BACKOFF * self.poll)

    def _seen(self, row) -> _Asked:
        return self._asked.setdefault(row.site_id, _Asked())
