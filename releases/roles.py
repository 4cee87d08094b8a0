"""The portal's roles, as Django groups a data migration creates (0006_roles).

Each group is complete on its own (a PROD release manager needs only that group). The migration
keeps its own copy of these lists, as migrations must not follow later edits of the code; this
module is what the README, `runportal`'s demo accounts and the tests read.
"""

from __future__ import annotations

# The portal's own permissions as `user.has_perm` takes them (declared on ReleasePlan's Meta).
LAUNCH_STEP = "releases.launch_step"
LAUNCH_PROTECTED = "releases.launch_protected"
FINALIZE_RELEASE = "releases.finalize_release"

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

SUPERUSER = "superuser"  # not a group: Django's superuser flag

# A role as a sentence says it ("ask a PROD release manager"): refusals and the README use these.
ROLE_NAMES = {
    VIEWERS: "viewer",
    RELEASE_MANAGERS: "release manager",
    PROD_RELEASE_MANAGERS: "PROD release manager",
    SUPERUSER: "superuser",
}

# Who can do what: the README's role table and `runportal`'s Ready banner say the same.
DESCRIPTIONS = {
    SUPERUSER: "everything, including weakening a two-person environment's protection",
    VIEWERS: "reads plans, steps, site results, launch requests and the audit trail; no operations",
    RELEASE_MANAGERS: "creates plans; launches, pauses, resumes, aborts, retries and skips on DEV and "
    "TEST; finalizes; edits DEV and TEST update groups; pauses on PROD too",
    PROD_RELEASE_MANAGERS: "all of that on PROD too; approves requests under the two-person rule; "
    "changes environment settings",
}

# `make run` (runportal with simulators) creates these accounts, all with one password: one per
# role, and a second PROD release manager, the other person of the two-person rule.
DEMO_ACCOUNTS = (
    ("admin", SUPERUSER),
    ("viewer", VIEWERS),
    ("release-manager", RELEASE_MANAGERS),
    ("prod-manager", PROD_RELEASE_MANAGERS),
    ("prod-approver", PROD_RELEASE_MANAGERS),
)
DEMO_NOTES = {"prod-approver": "the second person of the two-person rule"}


def role_for(*permissions: str) -> str:
    """The least role that holds every one of `permissions` (codenames, with or without the
    `releases.` prefix), in words: "release manager", "PROD release manager" ("superuser" when
    no group holds them)."""
    wanted = {p.removeprefix("releases.") for p in permissions}
    for role, codenames in ROLES.items():
        if wanted <= set(codenames):
            return ROLE_NAMES[role]
    return ROLE_NAMES[SUPERUSER]


def ask(*permissions: str) -> str:
    """ "ask a PROD release manager": whom to ask for what `permissions` allow."""
    return f"ask a {role_for(*permissions)}"


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
    """Create the missing demo accounts (staff, in their role's group; `admin` a superuser) with
    `password`; an account that exists is left as it is (an operator may have changed it)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    ensure_groups()
    users = get_user_model().objects
    for username, role in DEMO_ACCOUNTS:
        if users.filter(username=username).exists():
            continue
        if role == SUPERUSER:
            users.create_superuser(username, "", password)
            continue
        user = users.create_user(username, password=password, is_staff=True)
        user.groups.add(Group.objects.get(name=role))
    return list(DEMO_ACCOUNTS)
