"""A faithful Atlas simulator: the real Eve over mongomock, with Atlas's hooks and populations.

- `build_app(environment, ...)` builds one seeded simulated Atlas (a Flask/Eve app).
- `SimulatorServer(environment, port=0, ...)` serves one over HTTP on 127.0.0.1, with event
  log, fault injection and race controls for tests and benchmarks, and the sites' pages at its
  `site_url`.
- The sites themselves (`drupal`): Atlas's update queue, their statistics reports (drush, cron)
  and their pages, so a client can tell when a site's update worked, as with Atlas.
"""

from .app import ENVIRONMENTS, build_app
from .events import EventLog
from .faults import Faults
from .server import SimulatorServer

__all__ = ["ENVIRONMENTS", "EventLog", "Faults", "SimulatorServer", "build_app"]
