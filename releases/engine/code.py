"""Step kinds that create or change the release's code item (runbook steps 2, 5, 8, 9, 12)."""

from __future__ import annotations

import time

from atlas.errors import OutcomeUnknown
from atlas.types import CodeItem

from ..states import StepState
from .context import Outcome, StepContext

# How long a PATCH /code whose answer never came may take to show in Atlas before the step stops
# (Atlas stores the item first thing, before its cascade, so this is short).
STORE_GRACE_SECONDS = 20.0
DEPLOY_FLAGS = {"registry_rebuild": False, "cache_clear": True, "update_database": True}


def find_release_item(ctx: StepContext) -> CodeItem | None:
    plan = ctx.step.plan
    items = ctx.client.find_code(plan.profile_name, plan.version, "profile")
    return items[0] if items else None


def deploy_code(ctx: StepContext) -> Outcome:
    plan, params = ctx.step.plan, ctx.step.params
    commit = plan.commit_for(params.get("commit", "release"))
    if not commit:
        return Outcome(StepState.FAILED, "the release is not finalized yet: no final commit to deploy")
    item = find_release_item(ctx)
    if item is None:
        refusal = _commit_clash(ctx, commit)
        if refusal:
            return Outcome(StepState.FAILED, refusal)
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
            ctx.client.patch_code(item.id, {"meta": {"is_current": True}}, etag=item.etag)
        ctx.result.update(code_id=item.id, reused=True)
    ctx.result.update(commit=commit, is_current=bool(params.get("is_current")))
    ctx.save_result()
    return _wait_for_deploy(ctx, f"code item {ctx.result['code_id']} on {commit[:12]}")


def update_code(ctx: StepContext) -> Outcome:
    """Point the release item at the final commit (a PATCH without `meta`, so Atlas cascades to
    every site on the item), then optionally make it current in a second PATCH.

    The step succeeds only after the PATCH that changed the commit was answered: Atlas stores the
    item *before* its synchronous cascade (atlas-api.md §3.2), so finding the commit stored says
    nothing about the cascade. When the commit was stored by a call whose answer we never got (a
    worker that died, a timeout), the step waits until every site on the item shows a write after
    the item's own — the cascade reached it — before it goes on.
    """
    plan, params = ctx.step.plan, ctx.step.params
    commit = plan.commit_for(params.get("commit", "final"))
    if not commit:
        return Outcome(StepState.FAILED, "the release is not finalized yet: record the final commit first")
    item = find_release_item(ctx)
    if item is None:
        return Outcome(
            StepState.FAILED, f"no {plan.profile_name} {plan.version} profile item on {ctx.environment}"
        )
    ctx.result.update(code_id=item.id, commit=commit)
    ctx.result.setdefault("previous_commit", item.commit_hash)
    if item.commit_hash != commit and ctx.result.get("commit_patch") == "sent":
        # An earlier run sent the PATCH and never saw its answer: give a PATCH still on its way
        # time to show before a second one could run the cascade twice.
        item = _wait_for_commit(ctx, item.id, commit, STORE_GRACE_SECONDS)
        if item is None:
            return Outcome(
                StepState.FAILED, f"code item {ctx.result['code_id']} disappeared from {ctx.environment}"
            )
    if item.commit_hash != commit:
        ctx.result["cascaded_sites"] = ctx.client.count("sites", {"code.profile": item.id})
        ctx.result["commit_patch"] = "sent"  # durable before sending: a takeover knows to check
        ctx.save_result()
        ctx.doing(f"PATCH /code: Atlas re-deploys the {ctx.result['cascaded_sites']} sites on the item")
        try:
            # Alone in its PATCH: with `meta` beside it Atlas would skip the cascade to the sites.
            written = ctx.client.patch_code(item.id, {"commit_hash": commit}, etag=item.etag)
        except OutcomeUnknown as exc:
            # Not sent again by the client: it may still be running on Atlas. Wait for it.
            stored = _wait_for_commit(ctx, item.id, commit, STORE_GRACE_SECONDS)
            if stored is None or stored.commit_hash != commit:
                return Outcome(
                    StepState.PAUSED,
                    f"the PATCH of code item {item.id} to {commit[:12]} has an unknown outcome ({exc}) and "
                    f"the commit is not stored after {STORE_GRACE_SECONDS:g} s. It was not sent again, "
                    "as a second one would re-deploy every site twice: check the item in Atlas, then "
                    "resume (the item is read again first)",
                )
            written = None
        if written is not None and not written.already:
            ctx.result["commit_patch"] = "answered"
            ctx.save_result()
    if ctx.result.get("commit_patch") != "answered":
        stopped = _confirm_cascade(ctx, item.id)
        if stopped:
            return stopped
    if params.get("make_current"):
        fresh = ctx.client.get_code(item.id)
        if fresh is not None and not fresh.is_current:
            ctx.client.patch_code(item.id, {"meta": {"is_current": True}}, etag=fresh.etag)
        ctx.result["made_current"] = True
    ctx.save_result()
    return _wait_for_deploy(ctx, f"code item {item.id} now on {commit[:12]}")


def _wait_for_commit(ctx: StepContext, code_id: str, commit: str, seconds: float) -> CodeItem | None:
    """Read the item until it shows `commit` or `seconds` pass; the last read (None if gone)."""
    deadline = time.monotonic() + seconds
    while True:
        item = ctx.client.get_code(code_id)
        if item is None or item.commit_hash == commit or time.monotonic() >= deadline:
            return item
        ctx.doing(f"waiting for a PATCH of code item {code_id} with no answer yet to show in Atlas")
        requested = ctx.sleep(2.0)
        if requested:
            return item


def _confirm_cascade(ctx: StepContext, code_id: str) -> Outcome | None:
    """Wait until no site on the item was last written before the item itself (Eve stamps
    `_updated` to the second): the cascade has then reached every site (atlas-api.md §3.2)."""
    item = ctx.client.get_code(code_id)
    if item is None:
        return Outcome(StepState.FAILED, f"code item {code_id} disappeared from {ctx.environment}")
    behind_where = {"code.profile": code_id, "_updated": {"$lt": item.updated}}
    deadline = time.monotonic() + ctx.client.code_write_timeout[1]
    while (behind := ctx.client.count("sites", behind_where)) > 0:
        if time.monotonic() > deadline:
            return Outcome(
                StepState.PAUSED,
                f"the commit is stored on code item {code_id}, but after "
                f"{ctx.client.code_write_timeout[1]:g} s {behind} sites on it still show no write since: "
                "Atlas's cascade is still running or stopped. Check those sites, then resume",
            )
        ctx.doing(f"waiting for Atlas's cascade (a call we did not see answered): {behind} sites to go")
        requested = ctx.sleep(2.0)
        if requested:
            return Outcome.stopped(requested)
    ctx.result["commit_patch"] = "confirmed by the sites"
    ctx.save_result()
    return None


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
        return Outcome.stopped(requested)
    return Outcome(StepState.SUCCEEDED, what, ctx.result)
