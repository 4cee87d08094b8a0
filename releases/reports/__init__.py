"""Read-only views of a plan, one module per concern: `status` (the `release status --json`
document and the durations, database only), `previews` (what a step would do, read from Atlas: the
only module here that asks Atlas), `release` (the release report page) and `verification` (the
report's verification figures).

Callers use the names re-exported here (`reports.status(plan)`). `status` and `verification` are
then the functions, not the modules: import from a module by its full name
(`from releases.reports.verification import QUEUE_POINTS`).
"""

from .previews import (
    PREVIEW_PATHS,
    blast_radius,
    confirmed_counts,
    disabled_groups,
    frozen_targets,
    preview,
    preview_step,
)
from .release import FAILURES_SHOWN, failures, release_report, updates_over_time
from .status import durations, sites_to_check, status, step_status, sweeps
from .verification import verification

__all__ = [
    "FAILURES_SHOWN",
    "PREVIEW_PATHS",
    "blast_radius",
    "confirmed_counts",
    "disabled_groups",
    "durations",
    "failures",
    "frozen_targets",
    "preview",
    "preview_step",
    "release_report",
    "sites_to_check",
    "status",
    "step_status",
    "sweeps",
    "updates_over_time",
    "verification",
]
