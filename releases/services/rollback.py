"""Rolling back sites of an update step (`release rollback`, the step page's Roll back).

Each named site goes back onto the code item it was on before the step changed it (recorded when
the step froze its targets), then is verified against that item's version (`engine.rollback`).
Refused for a site the step never changed, one whose update has not ended (a forward update still
queued at Atlas would finish after the rollback and undo it), one already rolled back, and one
whose earlier item is gone. When the release's item runs database updates, the database is not
rolled back: the operator types the release's version to say they know. On a two-person
environment a rollback is a request another person approves, like any other writes to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from atlas.errors import AtlasError

from ..engine.verify import TASK_LIMIT
from ..models import AuditEvent, EnvironmentMisconfigured, SiteResult, StepRun, TransitionRefused
from ..states import RollbackState, SiteState, StepKind, StepState
from .core import ActionRefused, BrokerUnavailable, authorize, enqueue_step
from .launching import request_action

ROLLBACK_STATES = (StepState.PAUSED, StepState.FAILED, StepState.SUCCEEDED, StepState.ABORTED)


@dataclass
class RollbackPlan:
    """What a rollback would do: the sites, the earlier items' versions, and whether the release
    item's database updates make a typed confirmation necessary."""

    step: StepRun
    rows: list[SiteResult]
    versions: dict[str, str] = field(default_factory=dict)
    database: bool = False

    @property
    def confirmation(self) -> str:
        """What the operator types when the database is not rolled back ('' when nothing is asked)."""
        return self.step.plan.version if self.database else ""

    def describe(self) -> list[str]:
        lines = [
            f"{row.path or row.site_id}: back to {self.versions.get(row.previous_profile, '?')} "
            f"(now {row.get_state_display().lower()})"
            for row in self.rows
        ]
        if self.database:
            lines.append(
                f"{self.step.plan.version}'s item runs database updates (deploy.update_database): the "
                "sites' databases are NOT rolled back, only their code"
            )
        return lines


def eligibility(row: SiteResult, step: StepRun) -> str:
    """Why this site may not be rolled back now ('' when it may)."""
    if row.patched_at is None:
        return "the step never changed it"
    if row.state not in (SiteState.SUCCEEDED, SiteState.FAILED):
        return "its update has not ended (verified or past its deadline)"
    if row.rollback == RollbackState.DONE:
        return "already rolled back"
    if not row.previous_profile:
        return "the step recorded no earlier item for it"
    return _still_queued(row, step)


def _still_queued(row: SiteResult, step: StepRun) -> str:
    """Whether the site's forward update may still wait in Atlas's queue: it would then run after
    the rollback's and put the site back on the release (atlas-api.md §3.6). It has started once
    the site reported the release's version after its PATCH (the symlink is switched: a later
    update ends the site on its own item), and Atlas has given up on it past its task limit."""
    version = step.plan.version
    if row.verified_at is not None or row.rollback:
        return ""  # verified, or known ended when an earlier rollback of it was accepted
    if row.reported_at and row.reported_at > row.patched_at and row.reported_version == version:
        return ""
    hold = max(step.environment.verify_timeout_seconds, TASK_LIMIT)
    until = (row.finished_at or row.patched_at) + timedelta(seconds=hold)
    if timezone.now() >= until:
        return ""
    return (
        f"its update may still be queued at Atlas (no report of {version} since its PATCH): roll it back "
        f"once it reports, or after {timezone.localtime(until):%H:%M}"
    )


def prepare(
    step: StepRun, user, *, failed: bool = False, paths: Sequence[str] = (), ids=None
) -> RollbackPlan:
    """Check everything a rollback needs, reading the earlier items from Atlas; refuse (audited)
    naming what is wrong. Sites are named by path (or id), all failed ones, or SiteResult ids."""
    params = {"step": step.number, "failed": failed, "sites": list(paths)[:50]}
    authorize(user, "rollback", step=step, parameters=params)
    refusal = step_refusal(step)
    if not refusal:
        try:
            plan = RollbackPlan(step, _chosen(step, failed, paths, ids))
            _read_items(plan)
        except ActionRefused as exc:
            refusal = str(exc)
    if refusal:
        _refuse(refusal, user, step, params)
    return plan


def roll_back(
    step: StepRun,
    user,
    *,
    confirm: str = "",
    approved: bool = False,
    database_confirmed: bool = False,
    **chosen,
) -> StepRun:
    """Start the rollback of the chosen sites (`prepare`'s arguments), or request it on a
    two-person environment; audited per site. `confirm` is what the operator typed; an approval
    runs the request as confirmed when it was made (`database_confirmed`)."""
    plan = prepare(step, user, **chosen)
    params = {"step": step.number, "sites": len(plan.rows)}
    if plan.database and not database_confirmed and confirm.strip() != plan.confirmation:
        _refuse(
            f"the release item runs database updates and a rollback does not undo them: type "
            f"{plan.confirmation} to confirm (typed: {confirm.strip()!r})",
            user,
            step,
            params,
        )
    ids = [row.pk for row in plan.rows]
    if not approved and step.environment is not None and step.environment.two_person:
        return request_action(step, user, "rollback", sites=ids).step
    try:
        with transaction.atomic():
            step.start_rollback(user, ids, plan.versions)
            for row in plan.rows:
                AuditEvent.record(
                    "rollback",
                    user=user,
                    step=step,
                    parameters={
                        "site": row.site_id,
                        "path": row.path,
                        "to": row.previous_profile,
                        "version": plan.versions[row.previous_profile],
                    },  # fmt: skip
                )
            enqueue_step(step)
    except TransitionRefused as exc:
        _refuse(str(exc), user, step, params)
    except BrokerUnavailable as exc:
        step.refresh_from_db()
        _refuse(f"broker unreachable: {exc}; nothing was rolled back", user, step, params)
    return step


def step_refusal(step: StepRun) -> str:
    if step.kind != StepKind.UPDATE_SITES:
        return f"step {step.number} updates no sites: nothing to roll back"
    if step.state not in ROLLBACK_STATES:
        return f"step {step.number} is {step.state}: a rollback starts once it is paused or has ended"
    if (step.result or {}).get("rollback"):
        return f"step {step.number} has a rollback under way: resume or abort it first"
    return ""


def _chosen(step: StepRun, failed: bool, paths: Sequence[str], ids) -> list[SiteResult]:
    sites = step.sites.order_by("id")
    if ids is not None:
        rows = list(sites.filter(pk__in=ids))
        missing = sorted(set(ids) - {row.pk for row in rows})
        if missing:
            raise ActionRefused(f"step {step.number} has no site result {', '.join(map(str, missing))}")
    elif failed:
        rows = list(
            sites.filter(state=SiteState.FAILED, patched_at__isnull=False).exclude(
                rollback=RollbackState.DONE
            )
        )
        if not rows:
            raise ActionRefused(
                f"step {step.number} has no failed site that it changed and that is not rolled back"
            )
    else:
        rows = _by_path(step, paths)
    ineligible = [f"{row.path or row.site_id} ({why})" for row in rows if (why := eligibility(row, step))]
    if ineligible:
        raise ActionRefused("cannot roll back " + _listed(ineligible))
    return rows


def _by_path(step: StepRun, paths: Sequence[str]) -> list[SiteResult]:
    names = [name.strip().strip("/") for name in paths if name.strip().strip("/")]
    if not names:
        raise ActionRefused("name the sites to roll back (--sites PATH,...) or --failed")
    rows = list(step.sites.filter(path__in=names)) + list(step.sites.filter(site_id__in=names))
    found = {row.path for row in rows} | {row.site_id for row in rows}
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ActionRefused(f"step {step.number} did not target " + _listed(unknown))
    return sorted({row.pk: row for row in rows}.values(), key=lambda row: row.pk)


def _read_items(plan: RollbackPlan) -> None:
    """The earlier items' versions, and whether the release's item runs database updates."""
    step = plan.step
    try:
        client = step.environment.client()
        try:
            for item_id in sorted({row.previous_profile for row in plan.rows}):
                item = client.get_code(item_id)
                if item is None or item.deleted:
                    named = [row.path or row.site_id for row in plan.rows if row.previous_profile == item_id]
                    raise ActionRefused(
                        f"the earlier item {item_id} of {_listed(named)} no longer exists in Atlas"
                    )
                plan.versions[item_id] = item.version
            release = client.find_code(step.plan.profile_name, step.plan.version, "profile")
        finally:
            client.close()
    except (AtlasError, EnvironmentMisconfigured) as exc:
        raise ActionRefused(f"could not read the earlier items from {step.environment}: {exc}") from None
    plan.database = bool(release and (release[0].deploy or {}).get("update_database"))


def _listed(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _refuse(message: str, user, step: StepRun, params: dict) -> None:
    AuditEvent.record("rollback", outcome=AuditEvent.Outcome.REFUSED, user=user, step=step,
                      parameters=params, message=message)  # fmt: skip
    raise ActionRefused(message)
