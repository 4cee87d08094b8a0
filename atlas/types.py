"""Small typed views of Atlas documents, parsed at the boundary.

The rest of the portal never touches raw Eve envelopes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

# Atlas's DATE_FORMAT (atlas-api.md §0.8): whole seconds, always GMT.
DATE_FORMAT = "%Y-%m-%d %H:%M:%S GMT"
# What a date Atlas did not send (or sent unreadable) compares as: before any write.
NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Item:
    """What every Atlas item has: its `_id`, and the `_etag` a write must send as If-Match."""

    id: str
    etag: str


def _envelope(doc: dict) -> dict:
    """An Eve document's own fields, as Item's subclasses name them."""
    return {
        "id": str(doc["_id"]),
        "etag": str(doc.get("_etag", "")),
        "updated": str(doc.get("_updated", "")),
        "deleted": bool(doc.get("_deleted", False)),
    }


@dataclass(frozen=True, slots=True)
class Site(Item):
    sid: str = ""
    path: str = ""
    status: str = ""
    update_group: int | None = None
    profile: str | None = None
    core: str | None = None
    version: int | None = None
    updated: str = ""
    deleted: bool = False

    @classmethod
    def from_document(cls, doc: dict) -> Site:
        code = doc.get("code") or {}
        return cls(
            **_envelope(doc),
            sid=doc.get("sid", ""),
            path=doc.get("path", ""),
            status=doc.get("status", ""),
            update_group=doc.get("update_group"),
            profile=_str_or_none(code.get("profile")),
            core=_str_or_none(code.get("core")),
            version=doc.get("_version"),
        )


@dataclass(frozen=True, slots=True)
class CodeItem(Item):
    name: str = ""
    version: str = ""
    code_type: str = ""
    is_current: bool = False
    commit_hash: str = ""
    git_url: str = ""
    label: str = ""
    deploy: dict = field(default_factory=dict)
    deleted: bool = False
    updated: str = ""

    @classmethod
    def from_document(cls, doc: dict) -> CodeItem:
        meta = doc.get("meta") or {}
        return cls(
            **_envelope(doc),
            name=meta.get("name", ""),
            version=str(meta.get("version", "")),
            code_type=meta.get("code_type", ""),
            is_current=bool(meta.get("is_current", False)),
            commit_hash=doc.get("commit_hash", ""),
            git_url=doc.get("git_url", ""),
            label=meta.get("label", ""),
            deploy=dict(doc.get("deploy") or {}),
        )


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did. `already` is true when a re-read showed the change was already there
    (our earlier, unanswered attempt landed, or another writer made the same change)."""

    id: str
    etag: str
    status: int
    attempts: int
    already: bool = False
    body: dict = field(default_factory=dict)

    @property
    def updated(self) -> datetime:
        """The item's `_updated` in Atlas's answer (Atlas's clock, whole seconds): what a later
        statistics report's `updated` must be strictly after to have been written after this
        write. `NEVER` when there was no answer body (a re-read found the write applied)."""
        return parse_date(self.body.get("_updated"))


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What `delete_available_site` did: `deleted` (now, by us), `already_deleted`, or
    `left_pool` (the site was no longer `available` when re-read, so nothing was sent)."""

    id: str
    outcome: str
    attempts: int
    status: int | None = None
    site_status: str = ""
    after_conflict: bool = False


@dataclass(frozen=True, slots=True)
class Statistics:
    """A site's `statistics` item: what the site last reported about itself (atlas-api.md §3.6).

    - `version`: `express_code_version`, the profile version on the site's disk (new as soon as
      its update switched the code, before `drush updb` ran); None until the site reported.
    - `error`: `drupal_system_status`: True when the site has an error-level requirement, and
      pending database updates are one; None until the site reported.
    - `updated`: the item's `_updated` (aware, whole seconds): when the report was written.
    """

    site_id: str
    version: str | None
    error: bool | None
    updated: datetime
    schema_version: int | None = None
    id: str = ""
    etag: str = ""

    @classmethod
    def from_document(cls, doc: dict) -> Statistics:
        error = doc.get("drupal_system_status")
        schema = doc.get("express_core_schema_version")
        return cls(
            site_id=str(doc.get("site", "")),
            version=_str_or_none(doc.get("express_code_version")),
            error=error if isinstance(error, bool) else None,
            updated=parse_date(doc.get("_updated")),
            schema_version=schema if isinstance(schema, int) and not isinstance(schema, bool) else None,
            id=str(doc.get("_id", "")),
            etag=str(doc.get("_etag", "")),
        )


@dataclass(frozen=True, slots=True)
class DrushItem:
    """A `drush` item: `commands` run on every site matching `query` (a where-JSON string, as
    stored; None when it holds Atlas's default, the boolean True) at each execute."""

    id: str
    etag: str
    label: str = ""
    commands: tuple[str, ...] = ()
    query: str | None = None
    updated: datetime = NEVER  # its `_updated`: after `run_drush`, when Atlas stored the query

    @classmethod
    def from_document(cls, doc: dict) -> DrushItem:
        query = doc.get("query")
        return cls(
            id=str(doc["_id"]),
            etag=str(doc.get("_etag", "")),
            label=str(doc.get("label", "")),
            commands=tuple(str(command) for command in doc.get("commands") or ()),
            query=query if isinstance(query, str) else None,
            updated=parse_date(doc.get("_updated")),
        )


def format_date(moment: datetime) -> str:
    """A time as Atlas writes it (and parses it in a `where`): whole seconds, GMT."""
    return moment.astimezone(UTC).strftime(DATE_FORMAT)


def parse_date(value: object) -> datetime:
    """An Atlas date (`2019-02-15 18:30:00 GMT`) as an aware datetime; `NEVER` if unreadable."""
    try:
        return datetime.strptime(str(value), DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return NEVER


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
