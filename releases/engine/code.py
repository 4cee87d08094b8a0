"""Step kinds that create or change the release's code item (runbook steps 2, 5, 8, 9, 12)."""

from __future__ import annotations

import functools
import time

from atlas.errors import Cancelled, OutcomeUnknown
from atlas.types import CodeItem

from ..states import CASCADE_AWAITING, CASCADE_CONFIRMED, StepState
from .context import Outcome, StepContext

# How long a PATCH /code whose answer never came may take to show in Atlas before the step stops
# (Atlas stores the item first thing, before its cascade, so this is short).
STORE_GRACE_SECONDS = 20.0
DEPLOY_FLAGS = {"registry_rebuild": False, "cache_clear": True, "update_database": True}


def find_release_item(ctx: StepContext) -> CodeItem | None:
    plan = ctx.step.plan
    items = ctx.client.find_code(plan.profile_name, plan.version, "profile")
    return items[0] if items else None


def no_release_item(ctx: StepContext) -> Outcome:
    plan = ctx.step.plan
    return Outcome(
        StepState.FAILED, f"no {plan.profile_name} {plan.version} profile item on {ctx.environment}"
    )


def _commit_to_deploy(ctx: StepContext, default: str, then: str) -> tuple[str, Outcome | None]:
    """The commit the step deploys (its `commit` param, else `default`), or its failure while the
    release has no such commit yet."""
    commit = ctx.step.plan.commit_for(ctx.step.params.get("commit", default))
    if not commit:
        return commit, Outcome(StepState.FAILED, f"the release is not finalized yet: {then}")
    return commit, None


def _stoppable(kind):
    """A code step whose writes stop for the operator: a pause or abort that comes while a write
    is being retried (a 503, a timeout) stops the step before the retry is sent. What the first
    attempt did is unknown, so the result keeps saying the write was sent: a resume reads Atlas
    first (the commit PATCH's grace period, the release item found again) and sends nothing twice."""

    @functools.wraps(kind)
    def run(ctx: StepContext) -> Outcome:
        with ctx.resends_ask_the_operator():
            try:
                return kind(ctx)
            except Cancelled as exc:
                requested = ctx.beat()  # raises LeaseLost when that is why the client stopped
                if not requested:
                    raise
                ctx.save_result()
                return _stopped(ctx, requested, f"{exc}; its earlier attempt's outcome is unknown and "
                                "is read from Atlas again before anything is sent")  # fmt: skip

    return run


@_stoppable
def deploy_code(ctx: StepContext) -> Outcome:
    commit, refused = _commit_to_deploy(ctx, "release", "no final commit to deploy")
    if refused:
        return refused
    plan, params = ctx.step.plan, ctx.step.params
    item = find_release_item(ctx)
    if item is None:
        refusal = _commit_clash(ctx, commit)
        if refusal:
            return Outcome(StepState.FAILED, refusal)
        requested = ctx.beat(force=True)  # the last look before the POST (it may demote the current)
        if requested:
            return _stopped(ctx, requested, f"nothing sent: no code item created on {commit[:12]}")
        created = ctx.client.create_code(_code_payload(plan, commit, params.get("is_current", False)))
        ctx.result.update(code_id=created.id, reused=False)
    else:
        if item.commit_hash != commit:
            return Outcome(
                StepState.FAILED,
                f"{ctx.environment} already has code item {item.name} {item.version} ({item.id}) on commit "
                f"{item.commit_hash}, not {commit}: check it in Atlas before deploying again",
            )
        if params.get("is_current") and not item.is_current:
            requested = ctx.beat(force=True)  # the last look before the PATCH that demotes the current
            if requested:
                return _stopped(
                    ctx,
                    requested,
                    f"nothing sent: code item {item.id} found on {commit[:12]}, not made current",
                )
            ctx.client.patch_code(item.id, {"meta": {"is_current": True}}, etag=item.etag)
        ctx.result.update(code_id=item.id, reused=True)
    ctx.result.update(commit=commit, is_current=bool(params.get("is_current")))
    ctx.save_result()
    return _wait_for_deploy(ctx, f"code item {ctx.result['code_id']} on {commit[:12]}")


@_stoppable
def update_code(ctx: StepContext) -> Outcome:
    """Point the release item at the final commit (a PATCH without `meta`, so Atlas cascades to
    every site on the item), then optionally make it current in a second PATCH.

    The step succeeds only after the PATCH that changed the commit was answered: Atlas stores the
    item *before* its synchronous cascade (atlas-api.md §3.2), so finding the commit stored says
    nothing about the cascade. When the commit was stored by a call whose answer we never got (a
    worker that died, a timeout), the step never sends it again and never succeeds on its own: it
    pauses for the operator to confirm the cascade in Atlas, and goes on when resumed.
    """
    commit, refused = _commit_to_deploy(ctx, "final", "record the final commit first")
    if refused:
        return refused
    item = find_release_item(ctx)
    if item is None:
        return no_release_item(ctx)
    ctx.result.update(code_id=item.id, commit=commit)
    ctx.result.setdefault("previous_commit", item.commit_hash)
    # CASCADE_CONFIRMED is set by the operator's resume only (StepRun.resume); a relaunch after
    # an abort finds CASCADE_AWAITING still and asks again.
    if item.commit_hash != commit and ctx.result.get("commit_patch") in ("sent", CASCADE_AWAITING):
        # An earlier run sent the PATCH and never saw its answer: give a PATCH still on its way
        # time to show before a second one could run the cascade twice.
        item, requested = _wait_for_commit(ctx, item.id, commit, STORE_GRACE_SECONDS)
        if requested:
            return Outcome.stopped(requested)
        if item is None:
            return Outcome(
                StepState.FAILED, f"code item {ctx.result['code_id']} disappeared from {ctx.environment}"
            )
    if item.commit_hash != commit:
        stopped = _patch_commit(ctx, item, commit)
        if stopped:
            return stopped
    if ctx.result.get("commit_patch") not in ("answered", CASCADE_CONFIRMED):
        return _await_operator(ctx, item.id)
    if ctx.step.params.get("make_current"):
        stopped = _make_current(ctx, item.id, commit)
        if stopped:
            return stopped
    ctx.save_result()
    return _wait_for_deploy(ctx, f"code item {item.id} now on {commit[:12]}")


def _make_current(ctx: StepContext, code_id: str, commit: str) -> Outcome | None:
    """The second PATCH of `update_code`, once the commit PATCH was answered (or confirmed)."""
    fresh = ctx.client.get_code(code_id)  # If-Match from a fresh read: the commit PATCH changed it
    if fresh is None:
        return Outcome(StepState.FAILED, f"code item {code_id} disappeared from {ctx.environment}")
    if not fresh.is_current:
        # The last look before the PATCH that demotes the current item. A pause or abort that
        # came while the commit PATCH was inside Atlas (its cascade can take minutes) stops the
        # step here: the commit is stored, nothing more is sent, and a resume finds the commit
        # stored and only makes the item current.
        requested = ctx.beat(force=True)
        if requested:
            return _stopped(ctx, requested, f"{_commit_stored(ctx, code_id, commit)}; not made current")
        ctx.client.patch_code(code_id, {"meta": {"is_current": True}}, etag=fresh.etag)
    ctx.result["made_current"] = True
    return None


def _commit_stored(ctx: StepContext, code_id: str, commit: str) -> str:
    """What the commit PATCH stored, for a step that stops after it."""
    cascaded = ctx.result.get("cascaded_sites")
    how = f" (Atlas cascaded it to {cascaded} sites)" if cascaded is not None else ""
    return f"commit {commit[:12]} stored on code item {code_id}{how}"


def _stopped(ctx: StepContext, requested: str, where: str) -> Outcome:
    """The operator's pause or abort, saying what was stored and what was not, with the step's
    result (saved with the stop): a resume or a relaunch starts from it and sends nothing twice."""
    outcome = Outcome.stopped(requested)
    then = "resume to finish" if outcome.state == StepState.PAUSED else "launch the step again to finish"
    outcome.message = f"{outcome.message}: {where}: {then}"
    outcome.result = dict(ctx.result)
    return outcome


def _patch_commit(ctx: StepContext, item: CodeItem, commit: str) -> Outcome | None:
    """Send the one PATCH that re-deploys every site on the item; None when it was answered or
    its commit is found stored (the caller then decides whether the cascade is known done)."""
    ctx.result["cascaded_sites"] = ctx.client.count("sites", {"code.profile": item.id})
    ctx.result["commit_patch"] = "sent"  # durable before sending: a takeover knows to check
    ctx.save_result()
    ctx.doing(f"PATCH /code: Atlas re-deploys the {ctx.result['cascaded_sites']} sites on the item")
    requested = ctx.beat(force=True)  # the last look before the write that re-deploys every site
    if requested:
        return Outcome.stopped(requested)
    try:
        # Alone in its PATCH: with `meta` beside it Atlas would skip the cascade to the sites.
        written = ctx.client.patch_code(item.id, {"commit_hash": commit}, etag=item.etag)
    except OutcomeUnknown as exc:
        # Not sent again by the client: it may still be running on Atlas. Wait for it to show.
        stored, requested = _wait_for_commit(ctx, item.id, commit, STORE_GRACE_SECONDS)
        if requested:
            return Outcome.stopped(requested)
        if stored is None or stored.commit_hash != commit:
            return Outcome(
                StepState.PAUSED,
                f"the PATCH of code item {item.id} to {commit[:12]} has an unknown outcome ({exc}) and "
                f"the commit is not stored after {STORE_GRACE_SECONDS:g} s. It was not sent again, "
                "as a second one would re-deploy every site twice: check the item in Atlas, then "
                "resume (the item is read again first)",
            )
        return None
    if not written.already:
        ctx.result["commit_patch"] = "answered"
        ctx.save_result()
    return None


def _wait_for_commit(
    ctx: StepContext, code_id: str, commit: str, seconds: float
) -> tuple[CodeItem | None, str]:
    """Read the item until it shows `commit` or `seconds` pass: the last read (None if gone) and
    the operator's request if one came meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        item = ctx.client.get_code(code_id)
        if item is None or item.commit_hash == commit or time.monotonic() >= deadline:
            return item, ""
        ctx.doing(f"waiting for a PATCH of code item {code_id} with no answer yet to show in Atlas")
        requested = ctx.sleep(2.0)
        if requested:
            return item, requested


def _await_operator(ctx: StepContext, code_id: str) -> Outcome:
    """The commit is stored by a PATCH whose answer this portal never saw (a timeout, a worker
    that died): Atlas may still be cascading, and nothing in the API says when it is done
    (atlas-api.md §3.2, §3.5). The sites' `_updated` is only a hint (Atlas's own tasks write
    sites too), so wait for the hint, then pause: the operator confirms and resumes."""
    item = ctx.client.get_code(code_id)
    if item is None:
        return Outcome(StepState.FAILED, f"code item {code_id} disappeared from {ctx.environment}")
    behind_where = {"code.profile": code_id, "_updated": {"$lt": item.updated}}
    deadline = time.monotonic() + ctx.client.code_write_timeout[1]
    while (behind := ctx.client.count("sites", behind_where)) > 0 and time.monotonic() < deadline:
        ctx.doing(f"waiting for Atlas's cascade (a call we did not see answered): {behind} sites to go")
        requested = ctx.sleep(2.0)
        if requested:
            return Outcome.stopped(requested)
    hint = (
        f"{behind} sites on it still show no write since the item was stored: the cascade is still "
        "running or stopped"
        if behind
        else "every site on it shows a write since the item was stored, which suggests (but does not "
        "prove) that the cascade is done"
    )
    ctx.result["commit_patch"] = CASCADE_AWAITING  # saved with the pause itself, not before
    return Outcome(
        StepState.PAUSED,
        f"code item {code_id} is on the commit, set by a PATCH whose answer the portal never received; "
        f'{hint}. Confirm in Atlas that the code update finished (Slack "Code Update - Success", the '
        "sites' _updated), then resume: the step then goes on without sending the PATCH again",
        dict(ctx.result),
    )


def _commit_clash(ctx: StepContext, commit: str) -> str:
    clash = ctx.client.find_code_by_commit(commit)
    if not clash:
        return ""
    other = clash[0]
    return (
        f"commit {commit} is already used on {ctx.environment} by code item {other.name} {other.version} "
        f"({other.code_type}, id {other.id}); Atlas requires unique commit hashes, so the release item "
        "cannot be created: remove or re-point that item first"
    )


def _code_payload(plan, commit: str, is_current: bool) -> dict:
    return {
        "git_url": plan.git_url,
        "commit_hash": commit,
        "meta": {
            "name": plan.profile_name,
            "version": plan.version,
            "code_type": "profile",
            "is_current": is_current,
        },
        "deploy": dict(DEPLOY_FLAGS),
    }


def _wait_for_deploy(ctx: StepContext, what: str) -> Outcome:
    # A 2xx means "stored and queued" (atlas-api.md §3.5): give Atlas's deploy time to finish.
    ctx.doing(f"waiting {ctx.environment.deploy_wait_seconds:g} s for Atlas's code deploy to finish")
    requested = ctx.sleep(ctx.environment.deploy_wait_seconds)
    if requested:
        # The write is done and is found again on resume, which then waits afresh.
        return _stopped(ctx, requested, f"{what}, stored; the wait for Atlas's code deploy did not end")
    return Outcome(StepState.SUCCEEDED, what, ctx.result)
