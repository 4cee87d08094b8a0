"""The admin, one module per page group: `config` (environments, update groups, steps, site
results, the audit trail), `plans` (the plan list, creating a release, the plan page) with
`operations` (controls), `launching` (launch confirmation, approval) and `steps` (the step page);
`admin_site` brands the site and `refusal` is the page a user without permission sees."""

from . import admin_site, config, plans  # noqa: F401  (registers the model admins)
