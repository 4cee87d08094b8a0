"""Small typed views of Atlas documents, parsed at the boundary.

The rest of the portal never touches raw Eve envelopes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    etag: str
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
            id=str(doc["_id"]),
            etag=str(doc.get("_etag", "")),
            sid=doc.get("sid", ""),
            path=doc.get("path", ""),
            status=doc.get("status", ""),
            update_group=doc.get("update_group"),
            profile=_str_or_none(code.get("profile")),
            core=_str_or_none(code.get("core")),
            version=doc.get("_version"),
            updated=str(doc.get("_updated", "")),
            deleted=bool(doc.get("_deleted", False)),
        )


@dataclass(frozen=True, slots=True)
class CodeItem:
    id: str
    etag: str
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
            id=str(doc["_id"]),
            etag=str(doc.get("_etag", "")),
            name=meta.get("name", ""),
            version=str(meta.get("version", "")),
            code_type=meta.get("code_type", ""),
            is_current=bool(meta.get("is_current", False)),
            commit_hash=doc.get("commit_hash", ""),
            git_url=doc.get("git_url", ""),
            label=meta.get("label", ""),
            deploy=dict(doc.get("deploy") or {}),
            deleted=bool(doc.get("_deleted", False)),
            updated=str(doc.get("_updated", "")),
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


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
