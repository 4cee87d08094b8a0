"""Eve's own Mongo data layer, over an in-memory mongomock database instead of a mongod.

Every data layer instance (so every simulated Atlas) owns its own `mongomock.MongoClient`, so
several simulators run side by side in one process without sharing documents.
"""

from collections.abc import Mapping
from typing import Any

import mongomock
from bson import ObjectId
from cerberus.schema import DefinitionSchema
from eve.io.mongo import Mongo, Validator
from mongomock.collection import Collection
from mongomock.filtering import filter_applies


class _Connection:
    """What Eve's `PyMongo` extension exposes: a client (`cx`) and its database (`db`)."""

    def __init__(self, client: mongomock.MongoClient, db: mongomock.Database) -> None:
        self.cx = client
        self.db = db


class MongomockData(Mongo):
    """Eve's `Mongo` data layer with the default connection pre-built on mongomock.

    Eve builds connections lazily in `Mongo.pymongo()` and only when its prefix is missing from
    the cache, so registering ours under the default prefix at init replaces pymongo entirely.
    """

    def init_app(self, app: Any) -> None:
        super().init_app(app)
        client = mongomock.MongoClient(tz_aware=True)
        self.database = client[app.config["MONGO_DBNAME"]]
        self.driver["MONGO"] = _Connection(client, self.database)


_original_iter_documents = Collection._iter_documents


def _iter_documents_by_id(self: Collection, filter: Any) -> Any:
    """mongomock scans every document even for an `_id` lookup; Mongo uses its `_id` index.

    Eve looks items up by `_id` on every GET/PATCH/DELETE of an item and on every internal
    cascade PATCH, so without this a 3,000-site population costs tens of milliseconds per
    lookup. The result is the same: the candidate document still goes through the full filter.
    """
    if isinstance(filter, dict) and isinstance(filter.get("_id"), ObjectId):
        try:
            candidate = self._store[filter["_id"]]
        except KeyError:
            return iter(())
        return iter([candidate] if filter_applies(filter, candidate) else [])
    return _original_iter_documents(self, filter)


def install_id_index() -> None:
    """Give mongomock collections an `_id` index (idempotent)."""
    Collection._iter_documents = _iter_documents_by_id


class CachedSchemaValidator(Validator):
    """Eve's Mongo validator, parsing each resource schema once instead of on every write.

    Cerberus turns the schema mapping into a `DefinitionSchema` (normalised, expanded,
    validated) in every validator's constructor; Eve builds a validator per POST/PATCH. The
    result depends only on the mapping, so one parse per schema object is reused.
    """

    _definitions: dict[int, tuple[Mapping, DefinitionSchema]] = {}

    def __init__(self, schema: Any = None, *args: Any, **kwargs: Any) -> None:
        cached = self._definitions.get(id(schema))
        if cached is not None and cached[0] is schema:
            super().__init__(cached[1], *args, **kwargs)
            return
        super().__init__(schema, *args, **kwargs)
        if isinstance(schema, Mapping) and isinstance(self.schema, DefinitionSchema):
            self._definitions[id(schema)] = (schema, self.schema)
