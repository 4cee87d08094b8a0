"""The admin, one module per page group: `environments` (edited, audited), `records` (step runs,
site results and launch requests, read-only), `groups` (update groups), `audit` (the audit trail),
`plans` (the plan list, creating a release, the plan page) with `operations` (controls),
`launching` (launch confirmation, approval), `steps` (the step page), `rollback` and `report` (a
plan's release report), all built on `pages` (lookups, rendering); `admin_site` brands the site
and `refusal` is the page a user without permission sees."""

from . import admin_site, audit, environments, groups, plans, records  # noqa: F401  (registers the model admins)
