"""Drush items and `POST /drush/<id>/execute` (Atlas's `run.py`, `tasks.drush_prepare` and
`tasks.drush_command_run`; atlas-api.md §3.6).

Execute answers at once: it only queues `drush_prepare` on the command queue. When that task
runs it reads the item's `query` *then* (a PATCH of the query after the execute still counts),
looks the sites up as Atlas's own GET does, and queues one `drush_command_run` per site on the
same queue, behind whatever is already waiting there. That queue is not the update queue, so a
report may be written before the site's update ran. A missing item or a bad query crash the
prepare task: nothing runs, and only the simulator's log says so.

The account needs the `drush` role: the simulator answers 403 for a user named in
`state.drush_denied`. (Atlas 2.3.2's `requires_auth('drush')` passes the role to its LDAP
check, which ignores it; a deployment that denies it does so in front of Atlas.)
"""

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bson import ObjectId
from eve.auth import requires_auth
from eve.utils import ParsedRequest
from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from . import events as ev
from .drupal import STATISTICS_COMMAND

if TYPE_CHECKING:
    from .state import SimulatorState

EXECUTE_MESSAGE = "Drush command started, check the logs for outcomes."
DENIED_MESSAGE = "The account lacks the drush role."


def register(app: Flask, state: "SimulatorState") -> None:
    app.on_insert_drush += _fill_query_default
    app.on_fetched_resource_statistics += lambda response: state.events.record(
        ev.STATISTICS_READ, "", sites=[str(item.get("site")) for item in response.get("_items", [])]
    )

    @app.route("/drush/<drush_id>/execute", methods=["POST"])
    @requires_auth("drush")
    def execute_drush(drush_id: str) -> Response:
        user = g.get("atlas_user")
        if user in state.drush_denied:
            response = jsonify({"_status": "ERR", "_error": {"code": 403, "message": DENIED_MESSAGE}})
            response.status_code = 403
            return response
        state.events.record(ev.DRUSH_EXECUTE, drush_id, user=user)
        seconds = state.drupal.settings.command_ms / 1000
        state.drupal.commands.put(PrepareTask(state, drush_id, seconds))
        return Response(EXECUTE_MESSAGE, mimetype="text/html")


def _fill_query_default(items: list[dict]) -> None:
    for item in items:
        item.setdefault("query", True)


@dataclass
class PrepareTask:
    """`drush_prepare`: find the sites matching the item's query, queue a run for each."""

    state: "SimulatorState"
    drush_id: str
    command_seconds: float
    seconds: float = 0.0

    def start(self) -> bool:
        item, error = self._item()
        sites: list[dict] = []
        if item is not None:
            sites, error = self._sites(item.get("query"))
        if error:
            self.state.events.record(ev.DRUSH_PREPARE, self.drush_id, error=error, matched=0)
            return False
        self.state.events.record(ev.DRUSH_PREPARE, self.drush_id, matched=len(sites), query=item["query"])
        commands = list(item.get("commands") or [])
        for site in sites:
            self.state.drupal.commands.put(RunTask(self.state, site["_id"], commands, self.command_seconds))
        return False

    def finish(self) -> None:  # pragma: no cover - start() never asks for it
        pass

    def _item(self) -> tuple[dict | None, str]:
        try:
            oid = ObjectId(self.drush_id)
        except (TypeError, ValueError):
            return None, "no such drush item"
        item = self.state.db["drush"].find_one({"_id": oid})
        return (item, "") if item else (None, "no such drush item")

    def _sites(self, query: Any) -> tuple[list[dict], str]:
        """The sites Atlas's `get_eve('sites', 'where=<query>')` returns, or why it failed."""
        if not isinstance(query, str):
            return [], f"the query is not a where string: {query!r}"
        limit = self.state.max_url_length
        if limit and len(f"/sites?where={quote(query)}") > limit:
            return [], "414 Request-URI Too Long (Atlas's own GET of the sites)"
        try:
            json.loads(query)
        except ValueError:
            return [], "the query is not valid JSON"
        request = ParsedRequest()
        request.where = query
        request.sort = '[("_id", 1)]'
        request.projection = json.dumps({"_id": 1, "path": 1})
        try:
            with self.state.app.test_request_context("/"):
                cursor, _ = self.state.app.data.find("sites", request, {}, perform_count=False)
                return list(cursor), ""
        except HTTPException as error:
            return [], f"{error.code} {error.description}"


@dataclass
class RunTask:
    """`drush_command_run` on one site: each command, `--uri` the site's URL."""

    state: "SimulatorState"
    site_id: ObjectId
    commands: list[str]
    seconds: float

    def start(self) -> bool:
        return True

    def finish(self) -> None:
        drupal = self.state.drupal
        ok = True
        for command in self.commands:
            if STATISTICS_COMMAND in command:
                ok = drupal.report(self.site_id, source="drush") and ok
        self.state.events.record(ev.DRUSH_RUN, self.site_id, commands=self.commands, ok=ok)
