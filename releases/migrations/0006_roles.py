"""Roles as groups: Viewers, Release managers, PROD release managers (see releases/roles.py).

The permission lists are copied here on purpose: a migration must keep meaning what it meant.
"""

from django.db import migrations

MODELS = ("environment", "updategroup", "releaseplan", "steprun", "siteresult", "auditevent", "launchrequest")
VIEW = tuple(f"view_{model}" for model in MODELS)
MANAGE = (
    *VIEW,
    "add_releaseplan",
    "launch_step",
    "finalize_release",
    "add_updategroup",
    "change_updategroup",
    "delete_updategroup",
)
ROLES = {
    "Viewers": VIEW,
    "Release managers": MANAGE,
    "PROD release managers": (*MANAGE, "launch_protected", "change_environment"),
}


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations ran (post_migrate): create them now.
    config = apps.get_app_config("releases")
    original = getattr(config, "models_module", None)  # historical app configs have none
    config.models_module = True
    try:
        create_permissions(config, apps=apps, verbosity=0)
    finally:
        config.models_module = original
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        permissions = Permission.objects.filter(content_type__app_label="releases", codename__in=codenames)
        missing = set(codenames) - set(permissions.values_list("codename", flat=True))
        if missing:
            raise RuntimeError(f"permissions missing for {name}: {sorted(missing)}")
        group.permissions.set(permissions)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("releases", "0005_two_person_rule"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
