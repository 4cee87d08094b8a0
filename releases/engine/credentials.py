"""Until Atlas has accepted a site step's credentials, at most one request of ours is out.

Atlas binds to LDAP on every request (atlas-api.md §2): a wrong password must cost one refused
request, not one per site, or the service account locks and every release stops with it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, wait

from .context import StepContext
from .recorder import SiteOutcome


class CredentialsCheck:
    """Whether Atlas has accepted this step's credentials yet.

    - A delete step asks the client's side-effect-free probe (`PATCH /code/<id>`, a wrong ETag),
      started while the first batch is read, and dispatches nothing before it answered: a DELETE
      is never what finds out ("never probe with DELETE").
    - An update step's first site PATCH is its own probe: a refused PATCH applies nothing, so it
      goes alone, as soon as its batch is frozen, and the others follow once Atlas answered it
      past authentication. A separate probe first would hold every write back by one round trip
      to Atlas (its whole write latency) and prove no more.

    Until then a pause, an abort or a lost lease still acts (the step's loop keeps watching).
    """

    def __init__(self, ctx: StepContext, *, probe: bool) -> None:
        self.proven = False
        self._probe: Future | None = _start_probe(ctx) if probe else None

    def waiting(self) -> bool:
        """The probe is out: nothing may be dispatched yet."""
        return self._probe is not None and not self._probe.done()

    def wait(self, timeout: float) -> None:
        if self._probe is not None:
            wait([self._probe], timeout=timeout)

    def writes_allowed(self, window: int) -> int:
        """How many writes may be out now: `window` once the credentials are proven, else one.
        Raises what the probe met (a refusal, Atlas unreachable) before anything is dispatched."""
        if not self.proven and self._probe is not None:
            self._probe.result()
            self.proven = True
        return window if self.proven else 1

    def answered(self, outcome: SiteOutcome) -> None:
        """A write's answer. One that Atlas gave past authentication proves the credentials; a
        re-read only (GETs are public), no answer or a 5xx from the proxy in front proves nothing,
        and the next write goes alone again. A 401/403 never gets here: it stops the step."""
        status = outcome.http_status
        if outcome.attempts and status is not None and status < 500 and status not in (401, 403):
            self.proven = True

    def still_out(self) -> bool:
        """The probe has not answered (the step is ending without it: it must not be re-sent)."""
        return self.waiting()


def _start_probe(ctx: StepContext) -> Future:
    """The client's side-effect-free credentials probe, on a thread of its own."""
    answered: Future = Future()

    def probe() -> None:
        try:
            ctx.client.check_credentials()
        except BaseException as exc:  # handed to the step's thread by `writes_allowed`
            answered.set_exception(exc)
        else:
            answered.set_result(None)

    threading.Thread(target=probe, name=f"credentials-{ctx.step.pk}", daemon=True).start()
    return answered
