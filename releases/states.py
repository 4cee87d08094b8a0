"""Step and site states, with the named groups the engine and the admin rely on."""

from django.db import models


class StepState(models.TextChoices):
    # Labels from the names: "Pending", "Running", ...
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    SKIPPED = "skipped"


# A step in one of these holds its environment: no other step may run there meanwhile.
ACTIVE = (StepState.RUNNING, StepState.PAUSED)
# Later steps may start once every earlier step is in one of these.
DONE = (StepState.SUCCEEDED, StepState.SKIPPED)
LAUNCHABLE = (StepState.PENDING, StepState.FAILED, StepState.ABORTED)
SKIPPABLE = (StepState.PENDING, StepState.PAUSED, StepState.FAILED, StepState.ABORTED)


class SiteState(models.TextChoices):
    PENDING = "pending", "Pending"
    DISPATCHED = "dispatched", "Dispatched"  # sent, outcome not yet recorded: re-read before re-sending
    # Atlas answered its PATCH and queued the real update: succeeded once verified (never re-sent).
    UPDATING = "updating", "Updating at Atlas"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


class RollbackState(models.TextChoices):
    """A site's rollback (`release rollback`): back onto the code item it was on before the step."""

    NONE = "", "-"
    REQUESTED = "requested", "Requested"
    DISPATCHED = "dispatched", "Dispatched"  # its PATCH may be out: re-read before anything is sent
    UPDATING = "updating", "Updating at Atlas"
    DONE = "done", "Rolled back"
    FAILED = "failed", "Rollback failed"


# The rollback states of sites a rollback still works on (those before DONE and FAILED).
ROLLING_BACK = (RollbackState.REQUESTED, RollbackState.DISPATCHED, RollbackState.UPDATING)


class StepKind(models.TextChoices):
    GIT_BRANCH = "git_branch", "Create the release branch (recorded)"
    DEPLOY_CODE = "deploy_code", "Deploy a code item"
    UPDATE_CODE = "update_code", "Update a code item"
    DELETE_SITES = "delete_sites", "Delete available sites"
    UPDATE_SITES = "update_sites", "Update sites to the release profile"
    FINALIZE = "finalize", "Finalize the release in git (manual gate)"


MANUAL_KINDS = (StepKind.GIT_BRANCH, StepKind.FINALIZE)


class FailurePolicy(models.TextChoices):
    PAUSE = "pause", "Pause the step for the operator"
    FAIL = "fail", "Fail the step"


# A code step's `commit_patch` while it waits for the operator to confirm, in Atlas, a cascade run
# by a PATCH whose answer the portal never received; only a resume turns it into the confirmation.
CASCADE_AWAITING = "awaiting the operator's confirmation"
CASCADE_CONFIRMED = "confirmed by the operator"

# An update step's canary (Environment.canary): waiting for an operator after its first verified
# batch; only the operator's resume (StepRun.resume) lets it pass.
CANARY_WAITING = "waiting for an operator"
CANARY_PASSED = "continued by the operator"
