"""The admin, one module per page group: `config` (environments, steps, site results), `groups`
(update groups), `audit` (the audit trail), `plans` (the plan list, creating a release, the plan
page) with `operations` (controls), `launching` (launch confirmation, approval), `steps` (the step
page) and `report` (a plan's release report); `admin_site` brands the site and `refusal` is the
page a user without permission sees."""

from . import admin_site, audit, config, groups, plans  # noqa: F401  (registers the model admins)
