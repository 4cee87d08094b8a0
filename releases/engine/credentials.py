"""Until Atlas has accepted a site step's credentials, at most one request of ours is out.

Atlas binds to LDAP on every request (atlas-api.md §2): a wrong password must cost one refused
request, not one per site, or the service account locks and every release stops with it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, wait

from .context import StepContext


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
        self._client = ctx.client
        self._probe: Future | None = _start_probe(ctx) if probe else None

    def waiting(self) -> bool:
        """The probe is out: nothing may be dispatched yet."""
        return self._probe is not None and not self._probe.done()

    def wait(self, timeout: float) -> None:
        if self._probe is not None:
            wait([self._probe], timeout=timeout)

    def writes_allowed(self, window: int) -> int:
        """How many writes may be out now: `window` once the credentials are proven, else one.
        Raises what the probe met (a refusal, Atlas unreachable) before anything is dispatched.

        Proven means Atlas itself answered a write of ours past authentication (the client's
        `credentials_accepted`: a 2xx, 404, 412, 422...). A write's recorded outcome is no proof:
        after a 5xx from the proxy in front, a public re-read can find the site already done or
        gone, and the outcome looks like an answer when Atlas never saw the credentials.
        """
        if self._probe is not None:
            self._probe.result()
        return window if self._client.credentials_accepted else 1


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
