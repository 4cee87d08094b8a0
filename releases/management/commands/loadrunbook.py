"""Create the three environments, their update groups and the default runbook. Idempotent."""

from django.conf import settings
from django.db import transaction

from portal import commands
from releases import channel as channels
from releases.models import AuditEvent, Environment, UpdateGroup
from releases.runbook import DEFAULT_GROUPS, ENVIRONMENTS


class Command(commands.Command):
    help = "Create DEV/TEST/PROD from the ATLAS_* variables and the seed runbook's selectors."

    def add_arguments(self, parser):
        parser.add_argument(
            "--update",
            action="store_true",
            help="Refresh the update groups from the runbook, keeping those an operator edited.",
        )
        parser.add_argument(
            "--reset-edited",
            action="store_true",
            help="With --update: also overwrite operator-edited groups.",
        )

    @transaction.atomic
    @channels.from_shell
    def handle(self, *args, update=False, reset_edited=False, **options):
        created_envs = _create_environments()
        envs = {e.name: e for e in Environment.objects.all()}
        created_groups, refreshed = _seed_groups(envs, update=update, reset_edited=reset_edited)
        renumbered = _unique_positions(envs.values())
        AuditEvent.record(
            "loadrunbook",
            username="loadrunbook",
            parameters={
                "update": update,
                "reset_edited": reset_edited,
                "created_environments": created_envs,
                "created_groups": created_groups,
                "refreshed_groups": refreshed,
                "renumbered_groups": renumbered,
            },
        )
        self.stdout.write(
            f"environments created: {', '.join(created_envs) or 'none'}; update groups created: "
            f"{created_groups}; refreshed: {refreshed}"
        )


def _create_environments() -> list[str]:
    """DEV, TEST and PROD from the ATLAS_* variables, those missing only; the names created."""
    created_envs = []
    for name, order, protected in ENVIRONMENTS:
        defaults = settings.ATLAS_DEFAULTS[name]
        env, created = Environment.objects.get_or_create(
            name=name,
            defaults=dict(
                order=order,
                protected=protected,
                canary=protected,  # PROD: each update step waits after its first verified batch
                api_url=defaults["url"],
                site_url=defaults["site_url"],
                username=defaults["username"],
                password_env=defaults["password_env"],
                deploy_wait_seconds=settings.ATLAS_DEPLOY_WAIT_SECONDS,
                pool_wait_seconds=settings.ATLAS_POOL_WAIT_SECONDS,
                batch_pause_seconds=settings.ATLAS_BATCH_PAUSE_SECONDS,
            ),
        )
        if created:
            created_envs.append(name)
    return created_envs


def _seed_groups(envs: dict, *, update: bool, reset_edited: bool) -> tuple[int, int]:
    """The runbook's update groups: those missing created; with `update`, the others refreshed
    (but those an operator edited, unless `reset_edited`). Returns (created, refreshed)."""
    created_groups, refreshed = 0, 0
    for (env_name, step), groups in DEFAULT_GROUPS.items():
        for position, spec in enumerate(groups):
            values = dict(
                position=position,
                status=spec.get("status", ""),
                update_group=spec.get("update_group"),
                where=spec.get("where"),
                enabled=True,
                edited=False,
            )
            group, created = UpdateGroup.objects.get_or_create(
                environment=envs[env_name], step_number=step, name=spec["name"], defaults=values
            )
            created_groups += created
            if not created and update and (reset_edited or not group.edited):
                UpdateGroup.objects.filter(pk=group.pk).update(**values, updated_by="loadrunbook")
                refreshed += 1
    return created_groups, refreshed


def _unique_positions(environments) -> dict:
    """A group re-created or refreshed at its default position can land on a position an operator
    gave another group: renumber each (environment, step) 0…n-1 in its order, under a lock, as
    the admin's reorder does. Returns {"ENV step N: group": [old, new]} for the audit row."""
    moved = {}
    for env in environments:
        steps = UpdateGroup.objects.filter(environment=env).values_list("step_number", flat=True).distinct()
        for step in sorted(set(steps)):
            with transaction.atomic():
                groups = list(
                    UpdateGroup.objects.select_for_update()
                    .filter(environment=env, step_number=step)
                    .order_by("position", "id")
                )
                if [g.position for g in groups] == list(range(len(groups))):
                    continue
                for position, group in enumerate(groups):
                    if group.position != position:
                        UpdateGroup.objects.filter(pk=group.pk).update(position=position)
                        moved[f"{env.name} step {step}: {group.name}"] = [group.position, position]
    return moved
