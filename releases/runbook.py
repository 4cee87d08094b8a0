"""The seed runbook (`deploying_release.md`) as data: the fourteen steps and their selectors.

`loadrunbook` turns DEFAULT_GROUPS into UpdateGroup rows the operators can edit; a new
ReleasePlan instantiates STEPS as its StepRun rows.
"""

from dataclasses import dataclass, field

from .states import StepKind

AVAILABLE = {"status": {"$in": ["available"]}}


@dataclass(frozen=True)
class StepDefinition:
    number: int
    environment: str | None
    kind: str
    title: str
    params: dict = field(default_factory=dict)


STEPS = [
    StepDefinition(1, None, StepKind.GIT_BRANCH, "Create the release branch"),
    StepDefinition(2, "DEV", StepKind.DEPLOY_CODE, "Deploy the branch to DEV as the current profile",
                   {"commit": "release", "is_current": True}),
    StepDefinition(3, "DEV", StepKind.DELETE_SITES, "Delete all available sites on DEV"),
    StepDefinition(4, "DEV", StepKind.UPDATE_SITES, "Update Webcentral and the Homepage on DEV"),
    StepDefinition(5, "TEST", StepKind.DEPLOY_CODE, "Deploy the branch to TEST, not current",
                   {"commit": "release", "is_current": False}),
    StepDefinition(6, "TEST", StepKind.UPDATE_SITES, "Update launched sites outside the training set on TEST"),
    StepDefinition(7, None, StepKind.FINALIZE, "Finalize the release (tag and commit)"),
    StepDefinition(8, "DEV", StepKind.UPDATE_CODE, "Update the code item on DEV to the final commit",
                   {"commit": "final", "make_current": False}),
    StepDefinition(9, "TEST", StepKind.UPDATE_CODE, "Update the code item on TEST and make it current",
                   {"commit": "final", "make_current": True}),
    StepDefinition(10, "TEST", StepKind.DELETE_SITES, "Delete all available sites on TEST"),
    StepDefinition(11, "TEST", StepKind.UPDATE_SITES, "Update the remaining sites on TEST in batches",
                   {"sweep": True}),
    StepDefinition(12, "PROD", StepKind.DEPLOY_CODE, "Deploy the code item to PROD as current",
                   {"commit": "final", "is_current": True}),
    StepDefinition(13, "PROD", StepKind.DELETE_SITES, "Delete all available sites on PROD"),
    StepDefinition(14, "PROD", StepKind.UPDATE_SITES, "Update the sites on PROD in batches", {"sweep": True}),
]  # fmt: skip

ENVIRONMENTS = [("DEV", 1, False), ("TEST", 2, False), ("PROD", 3, True)]


def _batch(status: str, group: int) -> dict:
    return {"name": f"{status} group {group}", "status": status, "update_group": group}


DEFAULT_GROUPS: dict[tuple[str, int], list[dict]] = {
    ("DEV", 3): [{"name": "available sites", "where": AVAILABLE}],
    ("DEV", 4): [{"name": "webcentral and homepage", "where": {"path": {"$in": ["webcentral", "homepage"]}}}],
    ("TEST", 6): [
        {
            "name": "launched outside the training set",
            "where": {"status": "launched", "update_group": {"$ne": 13}},
        }
    ],
    ("TEST", 10): [{"name": "available sites", "where": AVAILABLE}],
    ("TEST", 11): [_batch("installed", g) for g in (0, 1, 2)] + [_batch("launched", 13)],
    ("PROD", 13): [{"name": "available sites", "where": AVAILABLE}],
    ("PROD", 14): [_batch("installed", g) for g in (0, 1, 2)] + [_batch("launched", g) for g in range(7)],
}

# After an environment's last site update, report what is still not on the release profile.
SWEEP_SELECTOR = {"status": {"$in": ["installed", "launched", "locked"]}}
