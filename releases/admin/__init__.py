"""The admin, one module per page group: `config` (environments, update groups, plans, steps,
site results, the audit trail) and `operations` (the release operations on the plan page)."""

from . import config  # noqa: F401  (registers the model admins)
