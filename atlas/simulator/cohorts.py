"""Who lives in each environment: cohorts of sites by status, update group and profile.

The shapes follow atlas-api.md §1.2 and the runbook: launched sites in groups 0–5, the homepage
in group 6, installed sites in 0–2, a small available pool, a few locked and down sites; TEST
has the training set (group 13); PROD keeps a few legacy launched sites in groups 7–12 and 13;
DEV has sites on feature-branch profiles.
"""

from dataclasses import dataclass

LAUNCH_GROUPS = (0, 1, 2, 3, 4, 5)
CREATION_GROUPS = (0, 1, 2)
LEGACY_GROUPS = (7, 8, 9, 10, 11, 12)


@dataclass(frozen=True)
class Cohort:
    status: str
    groups: tuple[int, ...]
    count: int
    profile: str = "current"  # key of the code item (see population.code_specs)
    path: str = ""  # a fixed path for a single site; else a readable slug
    slug_prefix: str = ""  # e.g. "training" → training-01, training-02, …
    package_rate: float = 0.0  # share of sites that also carry the events bundle package
    pool: bool = False  # pool sites keep path == sid, as Atlas creates them


def _homepage_and_webcentral() -> list[Cohort]:
    return [
        Cohort("launched", (6,), 1, path="homepage"),
        Cohort("launched", LAUNCH_GROUPS, 1, path="webcentral"),
    ]


def _dev(total: int) -> list[Cohort]:
    fixed = [
        *_homepage_and_webcentral(),
        Cohort("available", CREATION_GROUPS, 4, pool=True),
        Cohort("installed", CREATION_GROUPS, 6, profile="feature-a"),
        Cohort("installed", CREATION_GROUPS, 6, profile="feature-b"),
        Cohort("locked", LAUNCH_GROUPS, 1),
        Cohort("down", CREATION_GROUPS, 2, profile="previous"),
    ]
    rest = _remaining(total, fixed)
    launched = rest // 5
    return fixed + [
        Cohort("installed", CREATION_GROUPS, rest - launched, package_rate=0.05),
        Cohort("launched", LAUNCH_GROUPS, launched, package_rate=0.1),
    ]


def _test(total: int) -> list[Cohort]:
    fixed = [
        *_homepage_and_webcentral(),
        Cohort("launched", (13,), 40, slug_prefix="training"),
        Cohort("available", CREATION_GROUPS, 10, pool=True),
        Cohort("locked", LAUNCH_GROUPS, 8),
        Cohort("down", CREATION_GROUPS, 10, profile="previous"),
    ]
    rest = _remaining(total, fixed)
    installed = round(rest * 0.23)
    return fixed + [
        Cohort("installed", CREATION_GROUPS, installed, package_rate=0.05),
        Cohort("launched", LAUNCH_GROUPS, rest - installed, package_rate=0.1),
    ]


def _prod(total: int) -> list[Cohort]:
    fixed = [
        *_homepage_and_webcentral(),
        *(Cohort("launched", (group,), 2) for group in LEGACY_GROUPS),
        Cohort("launched", (13,), 8),
        Cohort("available", CREATION_GROUPS, 15, pool=True),
    ]
    rest = _remaining(total, fixed)
    locked, down, installed = round(rest * 0.01), round(rest * 0.015), round(rest * 0.2)
    return fixed + [
        Cohort("locked", LAUNCH_GROUPS, locked),
        Cohort("down", CREATION_GROUPS, down, profile="previous"),
        Cohort("installed", CREATION_GROUPS, installed, package_rate=0.05),
        Cohort("launched", LAUNCH_GROUPS, rest - locked - down - installed, package_rate=0.1),
    ]


def _remaining(total: int, fixed: list[Cohort]) -> int:
    """Sites left for the proportional cohorts; the fixed cohorts are always seeded whole."""
    return max(0, total - sum(cohort.count for cohort in fixed))


def cohorts_for(environment: str, total: int) -> list[Cohort]:
    """The environment's cohorts for about `total` sites (never fewer than the fixed ones)."""
    builders = {"dev": _dev, "test": _test, "prod": _prod}
    return [cohort for cohort in builders[environment](total) if cohort.count > 0]
