"""The Express sites themselves, as far as Atlas and a client can tell (atlas-api.md §3.3, §3.6).

Atlas writes nothing back when a `site_update` ends; what a client can see is each site's own
`statistics` report and its page. So the simulator keeps, per site, what is on disk and in its
database, and moves it as Atlas's `update_queue` works:

- queued: the site still runs (and reports) its old profile;
- started (the symlink is switched): the new profile's version, with pending database updates
  when the new code's express_core schema is ahead of the database's;
- finished: `drush updb` ran (when the code item's `deploy.update_database` is on), so no
  pending updates; or the site is broken by the new code: its page answers 500.

A site breaks only on code it never ran cleanly: a named path (`break_on_update`) or a
`broken_rate` draw, decided when its update onto that profile ends. It stays broken on that
profile (a retry does not help) and works again on a profile it ran before (a rollback).

Each PATCH carrying `code` queues its own update with the profile it named, in arrival order.
A second PATCH while the first is still queued queues a second update: both run, in order, and
the site ends on whichever started last. An update that ends after a later one on the same site
started changes nothing more (its event says `superseded`).
"""

import itertools
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from . import events as ev
from .queues import WorkQueue
from .statistics import StatisticsStore, code_schema, report_payload

if TYPE_CHECKING:
    from .state import SimulatorState

# A site in these statuses has no Drupal instance: no page, no reports.
NO_INSTANCE_STATUSES = ("pending", "down")
# What a broken site's `drush atlas-statistics` writes: a report with an error-level status,
# a normal report (only its page shows it is broken), or nothing (drush cannot bootstrap).
REPORT_MODES = ("error", "clean", "none")
STATISTICS_COMMAND = "atlas-statistics"


@dataclass(frozen=True)
class DrupalSettings:
    """How fast Atlas's workers go. `update_ms`/`command_ms`: time per site_update and per
    drush command run; `cron_seconds`: every site reports once per that period (0: never).

    The defaults are an in-process simulator's, for tests: short enough that verifying a few
    hundred sites takes a second or two. `manage.py atlas_simulator` has its own (1.5 s updates).
    """

    update_workers: int = 4
    update_ms: float = 20
    command_workers: int = 4
    command_ms: float = 2
    broken_rate: float = 0.0
    cron_seconds: float = 0.0


@dataclass
class Instance:
    """One site's code on disk and its database."""

    profile: str
    version: str
    db_schema: int
    good: set[str]  # profiles this site ran cleanly
    bad: set[str] = field(default_factory=set)  # profiles that broke it
    broken: bool = False
    report_mode: str = "error"
    update: int = 0  # the update running now (0: none)

    @property
    def pending_updates(self) -> bool:
        return self.db_schema < code_schema(self.version)


@dataclass
class UpdateTask:
    """One `site_update` on the update queue."""

    drupal: "Drupal"
    site_id: ObjectId
    profile: str
    path: str
    seconds: float
    number: int = 0
    schema: int = 0
    update_database: bool = True

    def start(self) -> bool:
        return self.drupal.start_update(self)

    def finish(self) -> None:
        self.drupal.finish_update(self)


class Drupal:
    """Every site's instance, the update and command queues, reports and pages."""

    def __init__(self, state: "SimulatorState", settings: DrupalSettings, *, seed: int = 0) -> None:
        self.state = state
        self.settings = settings
        self.log = state.events
        self.rng = random.Random(f"drupal-{state.environment}-{seed}")
        self.updates = WorkQueue("update_queue", state.lock, workers=settings.update_workers)
        self.commands = WorkQueue("command_queue", state.lock, workers=settings.command_workers)
        self.broken_paths: dict[str, str] = {}
        self._instances: dict[ObjectId, Instance] = {}
        self._destroyed: set[ObjectId] = set()
        self._update_numbers = itertools.count(1)
        self.statistics = StatisticsStore(state)
        self._paths: dict[str, ObjectId] | None = None
        self._cron_stop = threading.Event()
        if settings.cron_seconds > 0:
            threading.Thread(target=self._cron, name=f"cron-{state.environment}", daemon=True).start()

    def stop(self) -> None:
        self._cron_stop.set()
        self.updates.stop()
        self.commands.stop()

    @property
    def db(self) -> Any:
        return self.state.db

    # -- instances ---------------------------------------------------------------------------

    def instance(self, site_id: ObjectId, site: dict | None = None) -> Instance | None:
        """The site's instance; first built from its record (`site`, else read), clean."""
        found = self._instances.get(site_id)
        if found is not None or site_id in self._destroyed:
            return found
        if site is None:
            site = self.db["sites"].find_one({"_id": site_id}, {"code": 1, "_deleted": 1})
        if site is None or site.get("_deleted"):
            return None
        profile = str((site.get("code") or {}).get("profile"))
        version = self._version(profile)
        built = Instance(profile, version, code_schema(version), good={profile})
        self._instances[site_id] = built
        return built

    def _code(self, code_id: str) -> dict:
        try:
            oid = ObjectId(code_id)
        except (TypeError, ValueError):
            return {}
        return self.db["code"].find_one({"_id": oid}, {"meta": 1, "deploy": 1}) or {}

    def _version(self, code_id: str) -> str:
        return str((self._code(code_id).get("meta") or {}).get("version", ""))

    def break_on_update(self, paths: list[str], report: str = "error") -> None:
        """The sites at `paths` break at the end of their next update onto code they never ran."""
        if report not in REPORT_MODES:
            raise ValueError(f"report must be one of {REPORT_MODES}, not {report!r}")
        self.broken_paths.update(dict.fromkeys(paths, report))

    def remove(self, site_id: ObjectId) -> None:
        """Atlas's site_remove: the instance and its statistics are gone (the record may stay)."""
        self._instances.pop(site_id, None)
        self._destroyed.add(site_id)
        self.statistics.drop(site_id)
        self._paths = None

    # -- the update queue ---------------------------------------------------------------------

    def queue_update(self, original: dict, updates: dict, source: str) -> None:
        """A PATCH carrying `code` was stored: queue Atlas's site_update (atlas-api.md §3.3)."""
        site_id = original["_id"]
        self.instance(site_id, original)  # what is on disk is what the site ran before the PATCH
        code = {**(original.get("code") or {}), **updates["code"]}
        profile = str(code.get("profile"))
        seconds = self.settings.update_ms / 1000
        self.log.record(ev.UPDATE_QUEUED, site_id, profile=profile, source=source, path=original.get("path"))
        self.updates.put(UpdateTask(self, site_id, profile, str(original.get("path", "")), seconds))

    def start_update(self, task: UpdateTask) -> bool:
        instance = self.instance(task.site_id)
        if instance is None:  # removed while its update waited
            self.log.record(
                ev.UPDATE_FINISHED, task.site_id, profile=task.profile, skipped=True, broken=False
            )
            return False
        code = self._code(task.profile)
        version = str((code.get("meta") or {}).get("version", ""))
        task.number = next(self._update_numbers)
        task.schema = code_schema(version)
        task.update_database = bool((code.get("deploy") or {}).get("update_database", True))
        instance.profile, instance.version, instance.update = task.profile, version, task.number
        instance.broken = task.profile in instance.bad
        self.log.record(
            ev.UPDATE_STARTED,
            task.site_id,
            profile=task.profile,
            version=version,
            pending=instance.pending_updates,
        )
        return True

    def finish_update(self, task: UpdateTask) -> None:
        instance = self._instances.get(task.site_id)
        if instance is None or instance.update != task.number:
            self.log.record(
                ev.UPDATE_FINISHED, task.site_id, profile=task.profile, superseded=True, broken=False
            )
            return
        instance.update = 0
        if task.update_database:
            instance.db_schema = max(instance.db_schema, task.schema)
        instance.broken, instance.report_mode = self._breaks(task, instance)
        self.log.record(
            ev.UPDATE_FINISHED,
            task.site_id,
            profile=task.profile,
            version=instance.version,
            broken=instance.broken,
            pending=instance.pending_updates,
        )

    def _breaks(self, task: UpdateTask, instance: Instance) -> tuple[bool, str]:
        if task.profile in instance.good:
            return False, "error"
        if task.profile in instance.bad:
            return True, instance.report_mode
        mode = self.broken_paths.get(task.path)
        if mode is None and self.settings.broken_rate > 0 and self.rng.random() < self.settings.broken_rate:
            mode = "error"
        if mode is None:
            instance.good.add(task.profile)
            return False, "error"
        instance.bad.add(task.profile)
        return True, mode

    # -- statistics ---------------------------------------------------------------------------

    def report(self, site_id: ObjectId, source: str) -> bool:
        """The site writes its statistics item from what is on disk now (drush atlas-statistics
        or its cron). False when it cannot: no instance, or broken so drush cannot bootstrap."""
        site = self.db["sites"].find_one({"_id": site_id}, {"path": 1, "status": 1, "_deleted": 1})
        if site is None or site.get("_deleted") or site.get("status") in NO_INSTANCE_STATUSES:
            return False
        instance = self.instance(site_id)
        if instance is None or (instance.broken and instance.report_mode == "none"):
            return False
        error = instance.pending_updates or (instance.broken and instance.report_mode == "error")
        payload = report_payload(
            site_id,
            path=str(site.get("path", "")),
            status=str(site.get("status", "")),
            version=instance.version,
            schema=instance.db_schema,
            error=error,
            at=time.time(),
        )
        self.statistics.write(site_id, payload)
        self.log.record(ev.STATISTICS_REPORT, site_id, version=instance.version, error=error, source=source)
        return True

    def _cron(self) -> None:
        """Every site with an instance reports once per `cron_seconds`, spread over the period."""
        tick = min(1.0, self.settings.cron_seconds)
        round_: deque[ObjectId] = deque()
        size = 0
        while not self._cron_stop.wait(tick):
            with self.state.lock:
                if self.state.stopped:
                    return
                if not round_:
                    query = {"_deleted": {"$ne": True}, "status": {"$nin": list(NO_INSTANCE_STATUSES)}}
                    round_.extend(site["_id"] for site in self.db["sites"].find(query, {"_id": 1}))
                    size = len(round_)
                due = max(1, round(size * tick / self.settings.cron_seconds))
                for _ in range(min(due, len(round_))):
                    self.report(round_.popleft(), source="cron")

    # -- pages --------------------------------------------------------------------------------

    def page(self, path: str) -> tuple[int, ObjectId | None]:
        """What `<site URL>/<path>` answers, and which site answered it."""
        site_id = self._site_at(path.strip("/"))
        if site_id is None:
            return 404, None
        site = self.db["sites"].find_one({"_id": site_id}, {"status": 1, "_deleted": 1})
        if site is None or site.get("_deleted") or site.get("status") in NO_INSTANCE_STATUSES:
            return 404, site_id
        instance = self.instance(site_id)
        if instance is None:
            return 404, site_id
        return (500 if instance.broken else 200), site_id

    def paths_changed(self) -> None:
        self._paths = None

    def _site_at(self, path: str) -> ObjectId | None:
        """The site serving `path`: the homepage for the bare URL, else the site whose path is
        the longest leading part of it (a site serves its own sub-pages)."""
        if self._paths is None:
            sites = self.db["sites"].find({"_deleted": {"$ne": True}}, {"path": 1})
            self._paths = {site["path"]: site["_id"] for site in sites if site.get("path")}
        if not path:
            return self._paths.get("homepage")
        if path == "homepage":
            return None  # the homepage answers at the bare base URL only
        parts = path.split("/")
        for end in range(len(parts), 0, -1):
            found = self._paths.get("/".join(parts[:end]))
            if found is not None:
                return found
        return None
