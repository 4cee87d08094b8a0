"""The portal's roles, as Django groups a data migration creates (0006_roles).

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

# `make run` (runportal with simulators) creates one demo account per role, and a second PROD
# release manager so the two-person rule can be tried: (username, role).
DEMO_ACCOUNTS = (
    ("viewer", VIEWERS),
    ("release-manager", RELEASE_MANAGERS),
    ("prod-manager", PROD_RELEASE_MANAGERS),
    ("prod-approver", PROD_RELEASE_MANAGERS),
)


def ensure_groups() -> None:
    """Create (or restore) the role groups with their permissions, as migration 0005 does: for a
    database whose groups were removed since (a flushed test database, a deleted group)."""
    from django.contrib.auth.models import Group, Permission

    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(
            Permission.objects.filter(content_type__app_label="releases", codename__in=codenames)
        )


def ensure_demo_accounts(password: str) -> list[tuple[str, str]]:
    """Create the missing demo accounts (staff, in their role's group); return all of them."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    ensure_groups()
    users = get_user_model().objects
    for username, role in DEMO_ACCOUNTS:
        if not users.filter(username=username).exists():
            user = users.create_user(username, password=password, is_staff=True)
            user.groups.add(Group.objects.get(name=role))
    return list(DEMO_ACCOUNTS)
