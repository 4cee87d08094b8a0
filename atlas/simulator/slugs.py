"""Site identifiers: `sid`s as Atlas generates them and readable, unique paths."""

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cohorts import Cohort

UNITS = (
    "aerospace", "anthropology", "architecture", "art", "astrophysics", "athletics", "biology",
    "business", "chemistry", "classics", "communication", "computing", "dance", "economics",
    "education", "engineering", "english", "environment", "ethnicstudies", "film", "geography",
    "geology", "history", "housing", "humanities", "law", "libraries", "linguistics", "math",
    "music", "neuroscience", "philosophy", "physics", "psychology", "research", "sociology",
    "spanish", "studentaffairs", "sustainability", "theatre", "womenandgender", "writing",
)  # fmt: skip
TOPICS = (
    "about", "admissions", "alumni", "awards", "blog", "calendar", "center", "clinic",
    "colloquium", "conference", "events", "faculty", "fellowships", "gallery", "giving",
    "graduate", "institute", "lab", "lectures", "magazine", "mentoring", "news", "newsletter",
    "outreach", "people", "podcast", "program", "projects", "publications", "resources",
    "scholarships", "seminar", "showcase", "staff", "summer", "symposium", "undergraduate",
    "workshop",
)  # fmt: skip


def new_sid(rng: random.Random, taken: set[str]) -> str:
    """`p1` + 10 hex digits, as Atlas makes them, not in `taken` (which then holds it)."""
    while True:
        sid = f"p1{rng.getrandbits(40):010x}"
        if sid not in taken:
            taken.add(sid)
            return sid


class SlugMaker:
    """Deterministic, unique sids and paths drawn from one RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._sids: set[str] = set()
        self._slugs = [f"{unit}-{topic}" for unit in UNITS for topic in TOPICS]
        rng.shuffle(self._slugs)
        self._next = 0

    def sid(self) -> str:
        return new_sid(self.rng, self._sids)

    def path_for(self, cohort: "Cohort", index: int, sid: str) -> str:
        if cohort.path:
            return cohort.path
        if cohort.pool:
            return sid  # Atlas defaults a new site's path to its sid
        if cohort.slug_prefix:
            return f"{cohort.slug_prefix}-{index + 1:02d}"
        return self._readable()

    def _readable(self) -> str:
        """`physics-outreach`, …; once every pair is used, `physics-outreach-2`, …"""
        rounds, position = divmod(self._next, len(self._slugs))
        self._next += 1
        slug = self._slugs[position]
        return slug if rounds == 0 else f"{slug}-{rounds + 1}"
