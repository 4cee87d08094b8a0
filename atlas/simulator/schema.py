"""The Eve domain and settings of the simulated Atlas (atlas-api.md §1 and §2).

The resources mirror `atlas/data_structure.py` of CuBoulder/atlas for what the release portal
drives or reads: `code` and `sites`, the sites' own `statistics` reports (the fields a release
needs, and a few content counts) and `drush` items; the settings mirror Atlas's Eve
configuration.
"""

from typing import Any

ATLAS_VERSION = "2.3.2"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S GMT"

SITE_STATUSES = [
    "pending",
    "available",
    "installing",
    "installed",
    "launching",
    "launched",
    "locked",
    "take_down",
    "down",
    "restore",
]
CODE_TYPES = ["library", "theme", "module", "core", "profile", "static"]
GIT_URL_REGEX = r"((git|ssh|http(s)?)|(git@[\w\.]+))(:(//)?)([\w\.@\:/\-~]+)(\.git)(/)?"

# Site fields that hold code references, as Atlas's cascade looks them up.
CODE_REFERENCE_FIELDS = ("profile", "core", "package")


def _code_reference() -> dict[str, Any]:
    return {
        "type": "objectid",
        "data_relation": {"resource": "code", "field": "_id", "embeddable": True},
    }


# Atlas runs Eve 0.7 on Cerberus 0.9, which validates a POST *before* filling defaults, so
# `required` fields that also have a default (`meta.is_current`, the deploy flags) must be sent.
# Cerberus 1.x fills defaults first, so the simulator keeps those defaults out of the schema and
# fills them after validation (the code insert hook), and never normalises PATCHes.
DEPLOY_DEFAULTS = {"registry_rebuild": False, "cache_clear": True, "update_database": True}

CODE_SCHEMA: dict[str, Any] = {
    # `unique` on the whole dict: Eve compares the entire sub-document, so an identical `meta`
    # is a 422 before the 409 name+version check of the insert hook.
    "meta": {
        "type": "dict",
        "unique": True,
        "schema": {
            "name": {"type": "string", "minlength": 3, "required": True},
            "version": {"type": "string", "minlength": 1, "required": True},
            "code_type": {"type": "string", "allowed": CODE_TYPES, "required": True},
            "label": {"type": "string", "minlength": 3},
            "is_current": {"type": "boolean", "required": True},
            "tag": {"type": "list"},
        },
    },
    "deploy": {
        "type": "dict",
        "schema": {
            "registry_rebuild": {"type": "boolean", "required": True},
            "cache_clear": {"type": "boolean", "required": True},
            "update_database": {"type": "boolean", "required": True},
        },
    },
    "git_url": {"type": "string", "regex": GIT_URL_REGEX, "required": True},
    "commit_hash": {"type": "string", "required": True, "unique": True},
    "created_by": {"type": "string"},
    "modified_by": {"type": "string"},
}

SITES_SCHEMA: dict[str, Any] = {
    "path": {"type": "string", "unique": True},
    "db_key": {"type": "string"},
    "sid": {"type": "string", "minlength": 9, "maxlength": 14, "unique": True},
    "type": {"type": "string", "allowed": ["express"], "default": "express"},
    "site_type": {"type": "string"},
    "major_unit": {"type": "string"},
    "pantheon_size": {"type": "string"},
    "status": {"type": "string", "allowed": SITE_STATUSES, "default": "pending"},
    "environment": {"type": "string", "allowed": ["local", "dev", "test", "prod"]},
    "update_group": {"type": "integer"},
    "settings": {
        "type": "dict",
        "schema": {
            "page_cache_maximum_age": {"type": "integer", "default": 10800},
            "siteimprove_site": {"type": "integer"},
            "siteimprove_group": {"type": "integer"},
            "cse_creator": {"type": "string"},
            "cse_id": {"type": "string"},
        },
    },
    "tag": {"type": "list"},
    "code": {
        "type": "dict",
        "schema": {
            "core": _code_reference(),
            "profile": _code_reference(),
            "package": {"type": "list", "schema": _code_reference()},
        },
    },
    "dates": {
        "type": "dict",
        "schema": {
            "created": {"type": "datetime"},
            "assigned": {"type": "datetime"},
            "launched": {"type": "datetime"},
            "locked": {"type": "datetime"},
            "taken_down": {"type": "datetime", "nullable": True},
        },
    },
    # Atlas relates this to `statistics` (a data relation the simulator does not check).
    "statistics": {"type": "objectid"},
    "install": {"type": "boolean", "default": True, "nullable": True},
    "created_by": {"type": "string"},
    "modified_by": {"type": "string"},
}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": kind, "nullable": True}


# Atlas's STATISTICS_SCHEMA, reduced to what a site reports about its code and a few counts.
STATISTICS_SCHEMA: dict[str, Any] = {
    "site": {
        "type": "objectid",
        "data_relation": {"resource": "sites", "field": "_id"},
        "required": True,
        "unique": True,
    },
    "name": {"type": "string", "minlength": 1, "nullable": True},
    "status": {"type": "string", "minlength": 1, "nullable": True},
    "nodes_total": _nullable("integer"),
    "node_revision_total": _nullable("integer"),
    "nodes_by_type": {
        "type": "dict",
        "nullable": True,
        "schema": {kind: _nullable("integer") for kind in ("page", "article", "person", "file", "webform")},
    },
    "days_since_last_edit": _nullable("integer"),
    "days_since_last_login": _nullable("integer"),
    "beans_total": _nullable("integer"),
    "variable_cron_last": _nullable("integer"),
    # The profile's `.info` version as read from disk: new as soon as the symlink is switched.
    "express_code_version": _nullable("string"),
    # express_core's schema in the site's database: moves only when `drush updb` ran.
    "express_core_schema_version": _nullable("integer"),
    "theme_is_responsive": _nullable("boolean"),
    # True when Drupal has an error-level requirement; pending database updates are one.
    "drupal_system_status": _nullable("boolean"),
    "created_by": _nullable("string"),
    "modified_by": _nullable("string"),
}

# Atlas's DRUSH_SCHEMA. `query` defaults to the boolean True there (Cerberus 0.9 fills it after
# validating); the simulator fills it in its insert hook, as for the code item's defaults.
DRUSH_SCHEMA: dict[str, Any] = {
    "label": {"type": "string", "required": True},
    "commands": {
        "type": "list",
        "schema": {"type": "string", "minlength": 5},
        "required": True,
        "unique": True,
    },
    "query": {"type": "string", "minlength": 9},
    "created_by": {"type": "string"},
    "modified_by": {"type": "string"},
}


def _resource(
    title: str, schema: dict[str, Any], *, soft_delete: bool = True, **extra: Any
) -> dict[str, Any]:
    """An Eve resource as Atlas declares one: versioned, and soft-deleted unless said otherwise."""
    deletion = {"soft_delete": True} if soft_delete else {}
    return {"item_title": title, **extra, "versioning": True, **deletion, "schema": schema}


CODE_RESOURCE = _resource("code", CODE_SCHEMA)
# Eve registers additional lookups for GET/OPTIONS only: /sites/<sid> is read-only.
SITES_RESOURCE = _resource("site", SITES_SCHEMA, additional_lookup={"url": r'regex("[\w]+")', "field": "sid"})
STATISTICS_RESOURCE = _resource("statistics", STATISTICS_SCHEMA)
DRUSH_RESOURCE = _resource("drush", DRUSH_SCHEMA, soft_delete=False)


def eve_settings(dbname: str) -> dict[str, Any]:
    """Eve settings as Atlas configures them (atlas-api.md §2)."""
    return {
        "DOMAIN": {
            "code": CODE_RESOURCE,
            "sites": SITES_RESOURCE,
            "statistics": STATISTICS_RESOURCE,
            "drush": DRUSH_RESOURCE,
        },
        "MONGO_DBNAME": dbname,
        "DATE_FORMAT": DATE_FORMAT,
        "RESOURCE_METHODS": ["GET", "POST"],
        "ITEM_METHODS": ["GET", "PATCH", "PUT", "DELETE"],
        # All reads are public; every write needs HTTP Basic auth.
        "PUBLIC_METHODS": ["GET"],
        "PUBLIC_ITEM_METHODS": ["GET"],
        "PAGINATION_DEFAULT": 100,
        "PAGINATION_LIMIT": 2000,
        "MONGO_QUERY_BLACKLIST": ["$where"],
        "IF_MATCH": True,
        "ENFORCE_IF_MATCH": True,
        "VERSIONING": True,
        "SOFT_DELETE": True,
        "BULK_ENABLED": True,
        # Eve 0.7 did not normalise PATCHes: a nested default must not overwrite stored values.
        "NORMALIZE_ON_PATCH": False,
    }
