"""Eve's own Mongo data layer, over an in-memory mongomock database instead of a mongod.

Every data layer instance (so every simulated Atlas) owns its own `mongomock.MongoClient`, so
several simulators run side by side in one process without sharing documents.
"""

import copy
import datetime
import importlib
from collections.abc import Mapping
from typing import Any

import mongomock
import mongomock.collection
import mongomock.filtering
import mongomock.helpers
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


def _id_of(filter: Any) -> ObjectId | None:
    """The ObjectId a filter requires `_id` to equal, if any: at its top level or in one of
    the clauses of its `$and` (how Eve adds the soft-delete condition)."""
    if not isinstance(filter, dict):
        return None
    oid = filter.get("_id")
    if isinstance(oid, ObjectId):
        return oid
    clauses = filter.get("$and")
    if isinstance(clauses, list):
        for clause in clauses:
            oid = _id_of(clause)
            if oid is not None:
                return oid
    return None


def _iter_documents_by_id(self: Collection, filter: Any) -> Any:
    """mongomock scans every document even for an `_id` lookup; Mongo uses its `_id` index.

    Eve looks items up by `_id` on every GET/PATCH/DELETE of an item and on every internal
    cascade PATCH, and checks each reference to a code item by `_id` (with the soft-delete
    condition in an `$and`), so without this a 3,000-site population costs tens of milliseconds
    per lookup. The result is the same: the candidate document still goes through the full
    filter, unless the filter is `{"_id": oid}` alone, which the store's key already answers.
    """
    oid = _id_of(filter)
    if oid is None:
        return _original_iter_documents(self, filter)
    try:
        candidate = self._store[oid]
    except KeyError:
        return iter(())
    if len(filter) == 1 and "_id" in filter or filter_applies(filter, candidate):
        return iter([candidate])
    return iter(())


def install_id_index() -> None:
    """Give mongomock collections an `_id` index (idempotent), and `$in` a hashed lookup."""
    Collection._iter_documents = _iter_documents_by_id
    mongomock.filtering._in_op = _in_op
    mongomock.filtering._filterer_inst._operator_map["$in"] = _in_op


def store_new(collection: Collection, documents: list[dict]) -> None:
    """What `insert_many` stores, without its checks of each document (BSON encoding, key
    names, duplicate ids): for the documents the simulator builds itself when it seeds a
    population, where those checks took a third of the time. Not for collections with indexes."""
    store = collection._store
    if store.indexes:
        collection.insert_many(documents)
        return
    for document in documents:
        document.setdefault("_id", ObjectId())  # as insert_many fills it in the caller's dict
        store[document["_id"]] = mongomock.helpers.patch_datetime_awareness_in_document(document)


# -- $in ----------------------------------------------------------------------------------------
#
# mongomock's `$in` scans its list for every document: a bulk read of statistics
# (`{"site": {"$in": [2,000 ids]}}` over 4,500 reports) took 1.2 s, where Mongo uses an index.
# A list of ids or strings is turned into a set once (the same list object is tested against
# every document of one query) and each document is then one lookup. Neither type can equal a
# value of another type, so the result is the same as mongomock's.
_original_in_op = mongomock.filtering._in_op
_HASHED_IN_TYPES = (ObjectId, str)
_SHORT_IN_LIST = 8
# The last list seen and its set (None: not all hashable), replaced as one tuple: several
# simulators (several locks) may run queries in one process.
_in_lookup: tuple[Any, frozenset | None] = (None, None)


def _in_op(doc_value: Any, search: Any) -> bool:
    global _in_lookup
    if type(search) is not list or len(search) <= _SHORT_IN_LIST:
        return _original_in_op(doc_value, search)
    cached_list, lookup = _in_lookup
    if cached_list is not search:
        lookup = frozenset(search) if all(type(item) in _HASHED_IN_TYPES for item in search) else None
        _in_lookup = (search, lookup)
    if lookup is None:
        return _original_in_op(doc_value, search)
    if doc_value is mongomock.filtering.NOTHING:
        return False  # only a None in the list matches a missing field
    for value in doc_value if type(doc_value) is list else (doc_value,):
        try:
            if value in lookup:
                return True
        except TypeError:  # an unhashable value (a sub-document) equals no id or string
            continue
    return False


# -- copies ---------------------------------------------------------------------------------------
#
# mongomock copies documents on their way in and out (as a real driver would encode and decode
# them) with `copy.deepcopy` and, per field, `copy.copy`, and Eve's PATCH deep-copies the item it
# read. Both go through the memo and the `__reduce_ex__` machinery for every ObjectId and
# datetime (about 25 µs for one site, a twentieth of a PATCH for all of them). A document is
# only dicts, lists and values BSON stores as is, so the copies below walk dicts and lists and
# return immutable values themselves; anything else still goes through `copy`. The data is the
# same; only objects shared inside one document would no longer be (BSON has no such sharing).
#
_IMMUTABLE = frozenset(
    {str, int, float, bool, type(None), bytes, ObjectId, datetime.datetime, datetime.date, datetime.timedelta}
)


def _deepcopy(value: Any, memo: dict | None = None) -> Any:
    cls = type(value)
    if cls in _IMMUTABLE:
        return value
    if cls is dict:
        return {key: _deepcopy(item) for key, item in value.items()}
    if cls is list:
        return [_deepcopy(item) for item in value]
    return copy.deepcopy(value, memo)


class _MongomockCopy:
    """What `mongomock.collection` sees as its `copy` module."""

    deepcopy = staticmethod(_deepcopy)
    copy = staticmethod(copy.copy)


def _copy_field(obj: Any, container: Any) -> Any:
    """mongomock's `_copy_field` (a document read out of the store), immutables not copied."""
    cls = type(obj)
    if cls in _IMMUTABLE:
        return obj
    if isinstance(obj, list):
        return [_copy_field(item, container) for item in obj]
    if isinstance(obj, dict):
        new = container()
        for key, value in obj.items():
            new[key] = _copy_field(value, container)
        return new
    return copy.copy(obj)


# mongomock also rebuilds every document written (datetimes to naive UTC milliseconds) and every
# document read (datetimes back to aware UTC), testing each value against several types. The
# versions below take the common cases first and hand anything else to mongomock's own.
_PLAIN = frozenset({str, int, float, bool, type(None), bytes, ObjectId})  # neither changes these


def _walking(convert: Any) -> Any:
    """A copy of a document that walks dicts and lists, keeps plain values, and hands anything
    else (datetimes) to mongomock's own `convert`."""

    def walk(value: Any) -> Any:
        cls = type(value)
        if cls is dict:
            return {key: walk(item) for key, item in value.items()}
        if cls in _PLAIN:
            return value
        if cls is list:
            return [walk(item) for item in value]
        return convert(value)

    return walk


_to_stored_datetimes = _walking(mongomock.helpers.patch_datetime_awareness_in_document)
_to_aware_datetimes = _walking(mongomock.helpers.make_datetime_timezone_aware_in_document)


def install_fast_copies() -> None:
    """Make mongomock, and Eve's PATCH (its copy of the original document), copy documents
    without `copy`'s generic machinery (idempotent)."""
    mongomock.collection.copy = _MongomockCopy
    mongomock.collection._copy_field = _copy_field
    mongomock.helpers.patch_datetime_awareness_in_document = _to_stored_datetimes
    mongomock.helpers.make_datetime_timezone_aware_in_document = _to_aware_datetimes
    # `eve.methods.patch` is the `patch` function (re-exported by `eve.methods`), not the module.
    importlib.import_module("eve.methods.patch").deepcopy = _deepcopy


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
