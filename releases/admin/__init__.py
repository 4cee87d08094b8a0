"""The admin, one module per page group: `config` (environments, plans, steps, site results),
`groups` (update groups), `audit` (the audit trail), `operations` (the release operations on the
plan page) and `report` (a plan's release report)."""

from . import audit, config, groups  # noqa: F401  (registers the model admins)
