"""Realistic, deterministic populations of code items and sites for each environment.

Fixtures go straight into the mongomock collections with the meta fields Eve would have
written (`_created`, `_updated`, `_etag`, `_version`, `_deleted`) and their first shadow copy
in `<resource>_versions`, skipping per-document validation: 3,000 sites seed in about a
second instead of the minutes thousands of validated POSTs would take.
"""

import random
import struct
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from eve.utils import config, document_etag

from .cohorts import Cohort, cohorts_for
from .datalayer import store_new
from .drupal import NO_INSTANCE_STATUSES
from .slugs import SlugMaker
from .statistics import code_schema, report_payload

if TYPE_CHECKING:
    from .state import SimulatorState

# The population is as of Atlas v2.3.2's release, so that seeded dates never move.
SEEDED_AT = datetime(2021, 4, 29, 12, 0, tzinfo=UTC)
DEFAULT_SIZES = {"dev": 60, "test": 800, "prod": 3000}
SITE_DATE_FOR_STATUS = {
    "installed": "assigned",
    "launched": "launched",
    "locked": "locked",
    "down": "taken_down",
}


@dataclass(frozen=True)
class CodeSpec:
    key: str
    name: str
    version: str
    code_type: str
    is_current: bool
    repository: str
    label: str


CORE = CodeSpec("core", "drupal", "7.78", "core", True, "drupal-7.x", "Drupal 7.78")
PROFILE_CURRENT = CodeSpec("current", "express", "2.8.4", "profile", True, "express", "Express 2.8.4")
PROFILE_PREVIOUS = CodeSpec("previous", "express", "2.8.3", "profile", False, "express", "Express 2.8.3")
EVENTS_BUNDLE = CodeSpec(
    "bundle", "cu_events_bundle", "1.4.0", "module", False, "cu_events_bundle", "Events bundle 1.4.0"
)
FEATURE_PROFILES = (
    CodeSpec("feature-a", "express", "feature-ckeditor5", "profile", False, "express", "CKEditor 5 spike"),
    CodeSpec("feature-b", "express", "feature-search", "profile", False, "express", "Search redesign"),
)


@dataclass(frozen=True)
class Seeded:
    code: dict[str, ObjectId]
    sites: int
    available: int


def code_specs(environment: str) -> list[CodeSpec]:
    specs = [CORE, PROFILE_PREVIOUS, EVENTS_BUNDLE, PROFILE_CURRENT]
    if environment == "dev":
        specs.extend(FEATURE_PROFILES)
    return specs


def seed(state: "SimulatorState", *, sites: int | None, seed: int) -> Seeded:
    """Insert the environment's code items and sites (call inside an app context)."""
    rng = random.Random(f"population-{state.environment}-{seed}")
    clock = _IdClock(rng)
    code_ids = _insert_code(state.db, code_specs(state.environment), rng, clock)
    total = DEFAULT_SIZES[state.environment] if sites is None else sites
    cohorts = cohorts_for(state.environment, total)
    documents = _site_documents(cohorts, code_ids, rng, clock)
    _insert_with_versions(state.db, "sites", documents)
    state.remember_sids(doc["sid"] for doc in documents)
    versions = {code_ids[spec.key]: spec.version for spec in code_specs(state.environment)}
    # No shadow copies: Eve's late_versioning_catch writes version 1's at an item's first write,
    # as for documents stored before versioning was turned on.
    store_new(state.db["statistics"], _statistics_documents(documents, versions, rng, clock))
    available = sum(1 for doc in documents if doc["status"] == "available")
    return Seeded(code=code_ids, sites=len(documents), available=available)


class _IdClock:
    """Deterministic ObjectIds whose timestamps follow the documents' creation dates."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def object_id(self, created: datetime) -> ObjectId:
        return ObjectId(struct.pack(">I", int(created.timestamp())) + self.rng.randbytes(8))


def _commit_hash(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


def _insert_code(db: Any, specs: list[CodeSpec], rng: random.Random, clock: _IdClock) -> dict[str, ObjectId]:
    documents = []
    for age_days, spec in zip(range(len(specs) * 30, 0, -30), specs, strict=True):
        created = SEEDED_AT - timedelta(days=age_days)
        document = {
            "_id": clock.object_id(created),
            "meta": {
                "name": spec.name,
                "version": spec.version,
                "code_type": spec.code_type,
                "label": spec.label,
                "is_current": spec.is_current,
            },
            "deploy": {"registry_rebuild": False, "cache_clear": True, "update_database": True},
            "git_url": f"git@github.com:CuBoulder/{spec.repository}.git",
            "commit_hash": _commit_hash(rng),
            "created_by": "atlas",
            "modified_by": "atlas",
        }
        documents.append(_with_eve_meta(document, "code", created, created))
    _insert_with_versions(db, "code", documents)
    return {spec.key: document["_id"] for spec, document in zip(specs, documents, strict=True)}


def _site_documents(
    cohorts: list[Cohort], code_ids: dict[str, ObjectId], rng: random.Random, clock: _IdClock
) -> list[dict]:
    slugs = SlugMaker(rng)
    drafts = []
    for cohort in cohorts:
        for index in range(cohort.count):
            drafts.append(_site_draft(cohort, index, code_ids, rng, slugs))
    drafts.sort(key=lambda draft: draft["dates"]["created"])
    documents = []
    for draft in drafts:
        draft["_id"] = clock.object_id(draft["dates"]["created"])
        updated = max(draft["dates"].values())
        documents.append(_with_eve_meta(draft, "sites", draft["dates"]["created"], updated))
    return documents


def _site_draft(
    cohort: Cohort, index: int, code_ids: dict[str, ObjectId], rng: random.Random, slugs: "SlugMaker"
) -> dict:
    sid = slugs.sid()
    code: dict[str, Any] = {"core": code_ids["core"], "profile": code_ids[cohort.profile]}
    if cohort.package_rate and rng.random() < cohort.package_rate:
        code["package"] = [code_ids["bundle"]]
    return {
        "sid": sid,
        "path": slugs.path_for(cohort, index, sid),
        "type": "express",
        "status": cohort.status,
        "update_group": rng.choice(cohort.groups),
        "code": code,
        "dates": _site_dates(cohort.status, rng),
        "settings": {"page_cache_maximum_age": 10800},
        "install": True,
        "created_by": "atlas",
        "modified_by": "atlas",
    }


def _site_dates(status: str, rng: random.Random) -> dict[str, datetime]:
    # Pool sites are recent (they are replaced as they are used); others span five years.
    age = rng.randint(1, 30) if status in ("available", "pending") else rng.randint(40, 5 * 365)
    created = SEEDED_AT - timedelta(days=age, seconds=rng.randint(0, 86_399))
    dates = {"created": created}
    if status in SITE_DATE_FOR_STATUS:
        since = rng.randint(0, age - 1)
        dates[SITE_DATE_FOR_STATUS[status]] = SEEDED_AT - timedelta(
            days=since, seconds=rng.randint(0, 86_399)
        )
    if status in ("launched", "locked", "down"):
        dates.setdefault("assigned", created + timedelta(hours=1))
    return dates


def _statistics_documents(
    sites: list[dict], versions: dict[ObjectId, str], rng: random.Random, clock: _IdClock
) -> list[dict]:
    """Each site's statistics item, created with the site. Sites with an instance wrote their
    last report from cron a few hours before the seed date: their profile's version, clean."""
    documents = []
    for site in sites:
        if site["status"] == "down":
            continue  # take_down deleted it
        created = site["dates"]["created"]
        document: dict[str, Any] = {"site": site["_id"]}
        updated = created
        if site["status"] not in NO_INSTANCE_STATUSES and site["status"] != "available":
            updated = max(created, SEEDED_AT - timedelta(seconds=rng.randint(0, 12 * 3600)))
            version = versions[site["code"]["profile"]]
            document.update(
                report_payload(
                    site["_id"],
                    path=site["path"],
                    status=site["status"],
                    version=version,
                    schema=code_schema(version),
                    error=False,
                    at=updated.timestamp(),
                )
            )
        document["_id"] = clock.object_id(created)
        # Nobody writes a site's report but the site, and a client never recomputes an ETag:
        # a random one spares Eve's JSON encoding of thousands of reports.
        etag = f"{rng.getrandbits(160):040x}"
        documents.append(_with_eve_meta(document, "statistics", created, updated, etag=etag))
    return documents


def _with_eve_meta(
    document: dict, resource: str, created: datetime, updated: datetime, etag: str | None = None
) -> dict:
    """Add the fields Eve's POST writes; the ETag is Eve's own, computed as POST does, unless
    one is given."""
    document[config.DATE_CREATED] = created
    document[config.LAST_UPDATED] = updated
    document[config.DELETED] = False
    document[config.VERSION] = 1
    if etag is None:
        ignore_fields = config.DOMAIN[resource]["etag_ignore_fields"]
        without_id = {key: value for key, value in document.items() if key != "_id"}
        etag = document_etag(without_id, ignore_fields=ignore_fields)
    document[config.ETAG] = etag
    return document


def _insert_with_versions(db: Any, resource: str, documents: list[dict]) -> None:
    """Insert documents and their version-1 shadow copies as Eve's versioning stores them."""
    if not documents:
        return
    store_new(db[resource], documents)
    schema_fields = set(config.DOMAIN[resource]["schema"])
    kept = schema_fields | {config.LAST_UPDATED, config.ETAG, config.DELETED}
    shadows = []
    for document in documents:
        shadow = {key: value for key, value in document.items() if key in kept}
        shadow["_id" + config.VERSION_ID_SUFFIX] = document["_id"]
        shadow[config.VERSION] = document[config.VERSION]
        shadows.append(shadow)
    store_new(db[resource + config.VERSIONS], shadows)


def aggregate(sites: Any) -> dict[str, Any]:
    """Counts of live sites by status and update group (`GET /sites/agg`)."""
    pairs = Counter(
        (site.get("status"), site.get("update_group"))
        for site in sites.find({"_deleted": {"$ne": True}}, {"status": 1, "update_group": 1})
    )
    by_status: Counter = Counter()
    by_group: Counter = Counter()
    for (status, group), count in pairs.items():
        by_status[status] += count
        by_group[str(group)] += count
    items = [
        {"_id": {"status": status, "update_group": group}, "count": count}
        for (status, group), count in sorted(
            pairs.items(), key=lambda pair: (str(pair[0][0]), str(pair[0][1]))
        )
    ]
    return {
        "_items": items,
        "status": dict(by_status),
        "update_group": dict(by_group),
        "total": sum(pairs.values()),
    }
