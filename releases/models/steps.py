"""One runbook step of a release plan and the transitions that guard its state."""

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone

from ..states import (
    ACTIVE,
    CANARY_PASSED,
    CANARY_WAITING,
    CASCADE_AWAITING,
    CASCADE_CONFIRMED,
    DONE,
    LAUNCHABLE,
    MANUAL_KINDS,
    SKIPPABLE,
    RollbackState,
    SiteState,
    StepKind,
    StepState,
)
from ..wording import spans
from .worker import WorkerLease, lease

# A rollback runs on a step that is not running: the step then ends as it was.
ROLLBACK_FROM = (StepState.PAUSED, StepState.FAILED, StepState.SUCCEEDED, StepState.ABORTED)


def manual_gate(number: int) -> str:
    """The refusal of launching a manual gate (the model's, the launch check's: one wording)."""
    return f"step {number} is a manual gate: record it with `release finalize`"


def _running_again(**changes) -> dict:
    """A resume's or a rollback's changes: the step runs again, and waits for a worker to claim it."""
    return dict(
        state=StepState.RUNNING,
        requested="",
        message="",
        finished_at=None,
        lease_owner="",
        lease_expires_at=None,
        **changes,
    )


class TransitionRefused(Exception):
    """A state change that is not allowed now; the message says why."""


class StepRun(WorkerLease, models.Model):
    """One runbook step of one plan, and the state of its execution."""

    plan = models.ForeignKey("releases.ReleasePlan", on_delete=models.CASCADE, related_name="steps")
    number = models.PositiveSmallIntegerField()
    environment = models.ForeignKey("releases.Environment", null=True, blank=True, on_delete=models.PROTECT)
    kind = models.CharField(max_length=20, choices=StepKind.choices)
    title = models.CharField(max_length=300)
    params = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=12, choices=StepState.choices, default=StepState.PENDING)
    message = models.TextField(blank=True, help_text="Why the step paused, failed or was skipped.")
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    launched_by_username = models.CharField(max_length=150, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    continue_stage = models.BooleanField(
        default=False, help_text="Launch the environment's next step on success."
    )
    requested = models.CharField(max_length=8, blank=True, help_text="pause or abort, asked while running")
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    task_ids = models.JSONField(default=list, blank=True)
    result = models.JSONField(default=dict, blank=True, help_text="What the step found and did in Atlas.")
    activity = models.CharField(
        max_length=300, blank=True, help_text="What the running step is doing right now (its worker says)."
    )
    confirmed_targets = models.JSONField(
        null=True,
        blank=True,
        help_text="Sites per batch the operator saw when confirming the launch: a batch that grew "
        "since then pauses the step before its first write.",
    )

    class Meta:
        ordering = ["plan", "number"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "number"], name="step_unique_number"),
            # One environment never runs two steps at once: the database refuses a second active one.
            models.UniqueConstraint(
                fields=["environment"], condition=Q(state__in=ACTIVE), name="one_active_step_per_environment"
            ),
        ]
        indexes = [
            # The watchdog looks for running steps whose lease has lapsed.
            models.Index(fields=["state", "lease_expires_at"], name="step_state_lease"),
        ]

    def __str__(self) -> str:
        return f"{self.plan.version} step {self.number}: {self.title}"

    # -- guards ----------------------------------------------------------------------------

    def stage_chain(self) -> list["StepRun"]:
        """This step and the steps a stage launch from it continues with: the same environment,
        up to a manual gate (`release launch --stage`, `services.continue_stage`, the previews)."""
        later = (
            self.plan.steps.select_related("environment").filter(number__gt=self.number).order_by("number")
        )
        chain = [self]
        for following in later:
            if following.environment_id != self.environment_id or following.kind in MANUAL_KINDS:
                break
            chain.append(following)
        return chain

    def blockers(self, *, steps=None, busy=None) -> list[str]:
        """Why this step may not start now (empty when it may): the earliest earlier step not done
        (by name, the others by number), and another step holding the environment. A caller that
        has them passes the plan's `steps` and the active steps of every plan (`busy`), so the plan
        page asks the same question without a query per row."""
        if steps is None:
            earlier = list(self.plan.steps.filter(number__lt=self.number).exclude(state__in=DONE))
        else:
            earlier = [s for s in steps if s.number < self.number and s.state not in DONE]
        earlier.sort(key=lambda s: s.number)
        reasons = []
        if earlier:
            first, rest = earlier[0], earlier[1:]
            reason = f"step {first.number} ({first.title}) is {first.state}"
            if rest:
                verb = "is" if len(rest) == 1 else "are"
                reason += f", and {spans(s.number for s in rest)} {verb} not done either"
            reasons.append(reason)
        if self.environment_id:
            if busy is None:
                busy = StepRun.objects.filter(
                    environment=self.environment_id, state__in=ACTIVE
                ).select_related("plan")
            for step in busy:
                if step.environment_id == self.environment_id and step.pk != self.pk:
                    reasons.append(
                        f"{self.environment} is busy with {step.plan.version} step {step.number} ({step.state})"
                    )
        return reasons

    # -- transitions (each a conditional update: "another process got there first") -------

    def launch(self, user, *, continue_stage: bool = False) -> None:
        if self.kind in (StepKind.GIT_BRANCH, StepKind.FINALIZE):
            raise TransitionRefused(manual_gate(self.number))
        blockers = self.blockers()
        if blockers:
            raise TransitionRefused(f"step {self.number} cannot start: " + "; ".join(blockers))
        changes = dict(
            state=StepState.RUNNING,
            launched_by=user,
            launched_by_username=user.get_username() if user else "system",
            started_at=timezone.now(),
            finished_at=None,
            requested="",
            message="",
            lease_owner="",
            lease_expires_at=None,
            continue_stage=continue_stage,
        )
        self._move(LAUNCHABLE, changes, f"step {self.number} is no longer launchable")
        self.abandon_rollback()  # an ended rollback's leftovers: a launch runs the step, not them

    def skip(self, user, reason: str) -> None:
        if not reason.strip():
            raise TransitionRefused("a skip needs a reason")
        if self.kind in (StepKind.GIT_BRANCH, StepKind.FINALIZE):
            raise TransitionRefused(f"step {self.number} is a manual gate and cannot be skipped")
        changes = dict(state=StepState.SKIPPED, message=reason, finished_at=timezone.now(), requested="")
        self._move(SKIPPABLE, changes, f"step {self.number} cannot be skipped while {self.state}")
        self.flag_unanswered_deletes()
        self.abandon_rollback()

    def request(self, action: str) -> None:
        """Pause or abort: a running step stops at site granularity; a paused one aborts at once,
        and so does a running one whose worker is gone (its lease lapsed): nobody would act on it."""
        now = timezone.now()
        aborted = dict(state=StepState.ABORTED, finished_at=now, requested="", message="aborted")
        rollback = (self.result or {}).get("rollback")
        if action == "abort" and self.state == StepState.PAUSED and rollback:
            # A paused rollback: the rollback ends, and the step is as it was before it.
            before = rollback["before"]
            ended = dict(
                state=before["state"],
                requested="",
                message=f"{before['message']}; rollback aborted by the operator".lstrip("; ")[:4000],
                finished_at=None if before["state"] == StepState.PAUSED else now,
            )
            self._move([StepState.PAUSED], ended, "the step is no longer paused")
            self.abandon_rollback()
            return None
        if action == "abort" and self.state == StepState.PAUSED:
            self._move([StepState.PAUSED], aborted, "the step is no longer paused")
            self.flag_unanswered_deletes()
            return None
        if action == "abort":
            lapsed = Q(lease_expires_at__lt=now) | Q(lease_owner="", started_at__lt=now - lease())
            gone = {**aborted, "message": "aborted (no live worker held the step)"}
            rows = StepRun.objects.filter(lapsed, pk=self.pk, state=StepState.RUNNING).update(
                **gone, lease_owner="", lease_expires_at=None
            )
            if rows == 1:
                self.refresh_from_db()
                self.flag_unanswered_deletes()
                self.abandon_rollback()
                return None
        self._move([StepState.RUNNING], dict(requested=action), f"step {self.number} is not running")

    def abandon_rollback(self) -> None:
        """A rollback that ends before its sites did (aborted, skipped, stopped on an error): each
        site says what it is left as, and the step no longer has a rollback under way. A site whose
        PATCH may have been sent is read again by any later rollback before anything is sent."""
        rows = self.sites.filter(rollback__in=[RollbackState.REQUESTED, RollbackState.DISPATCHED,
                                               RollbackState.UPDATING])  # fmt: skip
        rows.filter(rollback=RollbackState.REQUESTED).update(rollback="", rollback_message="")
        rows.filter(rollback=RollbackState.DISPATCHED).update(
            rollback=RollbackState.FAILED,
            rollback_message="rollback stopped: its PATCH may have been sent; a new rollback reads the site first",
        )
        rows.filter(rollback=RollbackState.UPDATING).update(
            rollback=RollbackState.FAILED, rollback_message="rollback stopped: PATCHed back, not verified"
        )
        result = StepRun.objects.values_list("result", flat=True).get(pk=self.pk) or {}
        if "rollback" in result:
            self.result = {key: value for key, value in result.items() if key != "rollback"}
            StepRun.objects.filter(pk=self.pk).update(result=self.result)

    def flag_unanswered_deletes(self) -> int:
        """When a delete step ends without finishing: a site still `dispatched` may have had its
        DELETE sent with no answer recorded, and nobody will re-read it now. Its instance may be
        destroyed (atlas-api.md §3.4): it is failed and flagged for a check, never left silent."""
        if self.kind != StepKind.DELETE_SITES:
            return 0
        return self.sites.filter(state=SiteState.DISPATCHED).update(
            state=SiteState.FAILED,
            needs_check=True,
            finished_at=timezone.now(),
            message="a DELETE of this site may have been sent (no answer was recorded) when the step "
            "ended: its instance may be destroyed; check the site in Atlas",
        )

    def resume(self, *, retry_failed: bool = False) -> None:
        allowed = [StepState.PAUSED, StepState.FAILED] if retry_failed else [StepState.PAUSED]
        if retry_failed and (self.result or {}).get("rollback"):
            raise TransitionRefused(
                f"step {self.number} has a rollback under way: resume it (or abort it) before retrying"
            )
        with transaction.atomic():
            self._move(
                allowed,
                _running_again(),
                f"step {self.number} cannot resume",
            )
            result = StepRun.objects.values_list("result", flat=True).get(pk=self.pk) or {}
            if result.get("commit_patch") == CASCADE_AWAITING:
                # The operator's resume is the confirmation the paused code step asked for.
                self.result = {**result, "commit_patch": CASCADE_CONFIRMED}
                StepRun.objects.filter(pk=self.pk).update(result=self.result)
            if result.get("canary") == CANARY_WAITING and not result.get("rollback"):
                # ...and the "Continue" past an update step's canary.
                self.result = {**result, "canary": CANARY_PASSED}
                StepRun.objects.filter(pk=self.pk).update(result=self.result)
            # The failure threshold counts anew from an operator's resume: the sites failed so far
            # stay failed and listed (rolled back, or accepted) and no longer hold the step; those
            # about to be retried are not failures any more.
            failed = self.sites.filter(state=SiteState.FAILED)
            if retry_failed:
                failed = failed.exclude(needs_check=False, rollback="")
            result = StepRun.objects.values_list("result", flat=True).get(pk=self.pk) or {}
            self.result = {**result, "failed_baseline": failed.count()}
            StepRun.objects.filter(pk=self.pk).update(result=self.result)
            if retry_failed:
                # A site whose instance may be destroyed is never sent again: an operator looks.
                # Nor is a site rolled back (or whose rollback failed): it stays where it was put.
                self.sites.filter(state=SiteState.FAILED, needs_check=False, rollback="").update(
                    state=SiteState.PENDING, message=""
                )

    def start_rollback(self, user, sites: list[int], versions: dict[str, str]) -> None:
        """Run the step again for a rollback of `sites` (SiteResult ids) onto their earlier items
        (`versions`: item id -> version). The step holds its environment while it runs and ends
        in the state it had (`engine.rollback`); its stage does not go on from there."""
        if self.kind != StepKind.UPDATE_SITES:
            raise TransitionRefused(f"step {self.number} updates no sites: nothing to roll back")
        if (self.result or {}).get("rollback"):
            raise TransitionRefused(f"step {self.number} has a rollback under way: resume or abort it first")
        before = {"state": self.state, "message": self.message}
        with transaction.atomic():
            self._move(
                ROLLBACK_FROM,
                _running_again(continue_stage=False),
                f"step {self.number} cannot roll back sites now",
            )
            marked = (
                self.sites.filter(pk__in=sites)
                .exclude(rollback=RollbackState.DONE)  # any other is an earlier, ended rollback's
                .update(rollback=RollbackState.REQUESTED, rollback_message="")
            )
            if marked != len(sites):
                raise TransitionRefused(
                    "some of the sites were rolled back meanwhile: look at the step again"
                )
            rollback = {"before": before, "versions": versions, "by": user.get_username(), "ids": list(sites)}
            result = StepRun.objects.values_list("result", flat=True).get(pk=self.pk) or {}
            self.result = {**result, "rollback": rollback}
            StepRun.objects.filter(pk=self.pk).update(result=self.result)

    def record_manual(self, user, *, message: str = "") -> None:
        """A manual gate done outside the portal (branch created, release finalized)."""
        now = timezone.now()
        changes = dict(
            state=StepState.SUCCEEDED,
            launched_by=user,
            started_at=now,
            finished_at=now,
            message=message,
            launched_by_username=user.get_username() if user else "system",
        )
        self._move(
            [StepState.PENDING, StepState.SUCCEEDED], changes, f"step {self.number} cannot be recorded"
        )

    def _move(self, allowed, changes: dict, refusal: str) -> None:
        try:
            with transaction.atomic():
                rows = StepRun.objects.filter(pk=self.pk, state__in=list(allowed)).update(**changes)
        except IntegrityError:
            raise TransitionRefused(f"{self.environment} is already running another step") from None
        if rows != 1:
            self.refresh_from_db(fields=["state"])
            raise TransitionRefused(f"{refusal} (it is {self.state})")
        for key, value in changes.items():
            setattr(self, key, value)

    # -- reporting ---------------------------------------------------------------------------

    def counts(self) -> dict:
        """The step's sites per state (`SiteResultQuerySet.state_counts`)."""
        return self.sites.state_counts()
