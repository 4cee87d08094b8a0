"""The portal's roles, as Django groups a data migration creates (0005_roles).

Each group is complete on its own (a PROD release manager needs only that group). The migration
keeps its own copy of these lists, as migrations must not follow later edits of the code; this
module is what the README, `runportal`'s demo accounts and the tests read.
"""

from __future__ import annotations

VIEWERS = "Viewers"
RELEASE_MANAGERS = "Release managers"
PROD_RELEASE_MANAGERS = "PROD release managers"

_MODELS = (
    "environment",
    "updategroup",
    "releaseplan",
    "steprun",
    "siteresult",
    "auditevent",
    "launchrequest",
)
VIEW = tuple(f"view_{model}" for model in _MODELS)
MANAGE = (
    *VIEW,
    "add_releaseplan",
    "launch_step",
    "finalize_release",
    "add_updategroup",
    "change_updategroup",
    "delete_updategroup",
)
# `launch_protected` also approves launches under the two-person rule and changes protected settings.
PROTECTED = (*MANAGE, "launch_protected", "change_environment")

ROLES: dict[str, tuple[str, ...]] = {
    VIEWERS: VIEW,
    RELEASE_MANAGERS: MANAGE,
    PROD_RELEASE_MANAGERS: PROTECTED,
}

# Who can do what, for the README and the demo accounts `runportal` creates.
DESCRIPTIONS = {
    VIEWERS: "read plans, steps, site results and the audit trail; no operations",
    RELEASE_MANAGERS: "create plans, launch/pause/resume/abort/retry/skip on DEV and TEST, finalize, "
    "edit DEV and TEST update groups",
    PROD_RELEASE_MANAGERS: "all of that on PROD too, approve two-person launches, change environments",
}
