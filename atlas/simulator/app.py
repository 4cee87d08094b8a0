"""`build_app`: one simulated Atlas, a real Eve app over mongomock with Atlas's hooks."""

import random
import time
from collections.abc import Iterable
from typing import Any

from eve import Eve
from eve.auth import BasicAuth
from flask import Flask, Response, current_app, g, jsonify

from . import behaviours, drush, population
from . import events as ev
from .datalayer import CachedSchemaValidator, MongomockData, install_fast_copies, install_id_index
from .drupal import DrupalSettings
from .schema import ATLAS_VERSION, eve_settings
from .state import SimulatorState
from .wsgi import SerializedWSGI

ENVIRONMENTS = ("dev", "test", "prod")


class AtlasBasicAuth(BasicAuth):
    """HTTP Basic against the simulator's user table (Atlas binds to LDAP on every request)."""

    def check_auth(
        self, username: str, password: str, allowed_roles: Any, resource: str, method: str
    ) -> bool:
        state = current_app.simulator
        if username in state.users and state.users[username] == password:
            g.atlas_user = username
            return True
        state.events.record(ev.AUTH_FAILED, username, method=method, resource=resource)
        return False


def build_app(
    environment: str,
    *,
    sites: int | None = None,
    seed: int = 0,
    username: str = "release-portal",
    password: str = "secret",
    users: dict[str, str] | None = None,
    prefix: str = "",
    pool_refill_delay: float = 2.0,
    pool_size: int | None = None,
    update_workers: int = DrupalSettings.update_workers,
    update_ms: float = DrupalSettings.update_ms,
    command_workers: int = DrupalSettings.command_workers,
    command_ms: float = DrupalSettings.command_ms,
    broken_rate: float = DrupalSettings.broken_rate,
    cron_seconds: float = DrupalSettings.cron_seconds,
    drush_denied: Iterable[str] = (),
) -> Flask:
    """Build a seeded simulated Atlas for `environment` (dev, test or prod).

    `sites` overrides the environment's population size; `users` adds accounts beside
    `username`/`password`; `prefix` serves the API under `/<prefix>/` (as Atlas is under
    `/atlas` behind Apache); `pool_size` defaults to the seeded number of available sites.
    Atlas's update queue runs `update_workers` site updates at once, `update_ms` each; its
    command queue `command_workers` drush runs, `command_ms` each; `broken_rate` of the updates
    onto new code break their site; with `cron_seconds` every site reports its statistics once
    per that period; `drush_denied` users lack the drush role (see `drupal` and `drush`).
    The returned app carries `app.simulator` (a `SimulatorState`).
    """
    environment = environment.lower()
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r}; expected one of {ENVIRONMENTS}")
    app = _eve_app(environment)
    drupal = DrupalSettings(
        update_workers=update_workers,
        update_ms=update_ms,
        command_workers=command_workers,
        command_ms=command_ms,
        broken_rate=broken_rate,
        cron_seconds=cron_seconds,
    )
    users = {username: password, **(users or {})}
    state = _attach_state(app, environment, users, drupal, seed=seed, delay=pool_refill_delay)
    state.drush_denied.update(drush_denied)
    seeded = _seed(app, state, sites=sites, seed=seed)
    state.tasks.pool_size = seeded.available if pool_size is None else pool_size
    app.wsgi_app = SerializedWSGI(app.wsgi_app, state, prefix)
    return app


def _eve_app(environment: str) -> Eve:
    install_id_index()
    install_fast_copies()
    return Eve(
        settings=eve_settings(f"atlas_{environment}"),
        data=MongomockData,
        auth=AtlasBasicAuth,
        validator=CachedSchemaValidator,
    )


def _attach_state(
    app: Eve, environment: str, users: dict[str, str], drupal: DrupalSettings, *, seed: int, delay: float
) -> SimulatorState:
    """The simulator's state on `app.simulator`, with Atlas's tasks, its Drupal sites and the
    routes and hooks that act on them."""
    state = SimulatorState(
        app=app,
        environment=environment,
        users=users,
        rng=random.Random(f"atlas-{environment}-{seed}"),
    )
    state.attach_tasks(delay=delay)
    state.attach_drupal(drupal, seed=seed)
    app.simulator = state
    behaviours.register(app, state)
    drush.register(app, state)
    _add_routes(app, state)
    return state


def _seed(app: Flask, state: SimulatorState, *, sites: int | None, seed: int) -> population.Seeded:
    started = time.perf_counter()
    with app.app_context():
        seeded = population.seed(state, sites=sites, seed=seed)
    state.seed_seconds = time.perf_counter() - started
    return seeded


def _add_routes(app: Flask, state: SimulatorState) -> None:
    @app.errorhandler(409)
    def conflict(error: Any) -> Response:
        # Atlas's run.py answers 409 with its own body, not Eve's error envelope.
        response = jsonify({"message": error.description})
        response.status_code = 409
        return response

    @app.route("/version")
    def version() -> Response:
        return Response(ATLAS_VERSION, mimetype="text/plain")

    @app.route("/sites/agg")
    def sites_aggregate() -> Response:
        return jsonify(population.aggregate(state.db["sites"]))
