"""`manage.py release rollback`: the subcommand's handler, mixed into the release command (the
leading underscore keeps Django from taking this module for a command)."""

from __future__ import annotations

import sys

from django.core.management.base import CommandError

from releases import cli, services
from releases.services import rollback


class RollbackSubcommand:
    """Needs the command's `json`, `stdout`, `stderr`, `style`, `_approval_awaited`, `_done` and
    `_step_document`."""

    def _rollback(self, version, step, failed, sites, user, yes, wait, timeout, **options):
        plan = cli.get_plan(version)
        acting = services.resolve_user(user)
        target = services.get_step(plan, step)
        chosen = {"failed": failed, "paths": sites or ()}
        prepared = rollback.prepare(target, acting, **chosen)
        if yes:  # said, not asked: the database warning is printed all the same
            for line in prepared.describe():
                cli.note(self.stderr, line)
        stdin = options.get("stdin", sys.stdin)
        confirm = prepared.confirmation if yes else self._confirm_rollback(prepared, stdin)
        target = rollback.roll_back(target, acting, confirm=confirm, **chosen)
        if self._approval_awaited(target, "rollback", wait, timeout):
            return None
        if not wait:
            return self._done(target, "rollback", f"rolling back {len(prepared.rows)} sites")
        self._follow_rollback(plan, target, prepared, timeout)

    def _follow_rollback(self, plan, target, prepared, timeout) -> None:
        waiter = cli.StepWaiter(report=lambda line: cli.note(self.stderr, line), timeout=timeout)
        result = waiter.follow(target, stage=False)
        rows = list(target.sites.filter(pk__in=[row.pk for row in prepared.rows]).order_by("id"))
        done = sum(1 for row in rows if row.rollback == "done")
        if self.json:
            document = self._step_document(target, "rollback")
            document["sites"] = [
                {
                    "path": row.path,
                    "site_id": row.site_id,
                    "rollback": row.rollback,
                    "message": row.rollback_message,
                }
                for row in rows
            ]
            cli.emit_json(self.stdout, document)
        if result.timed_out:
            raise CommandError(result.message, returncode=cli.TIMED_OUT)
        if done < len(rows):
            failed_rows = [f"{row.path}: {row.rollback_message}" for row in rows if row.rollback != "done"]
            raise CommandError(
                f"{done} of {len(rows)} sites rolled back; not: " + "; ".join(failed_rows[:10]),
                returncode=cli.REFUSED,
            )
        if not self.json:
            how = "verified" if target.environment.verify else "not verified: verification is off"
            self.stdout.write(
                self.style.SUCCESS(f"{plan.version} step {target.number}: {done} sites rolled back ({how})")
            )

    def _confirm_rollback(self, prepared, stdin) -> str:
        """Show what the rollback does and ask; returns what was typed for the database warning."""
        cli.require_terminal(stdin, "roll back", "the step's failed sites")
        for line in prepared.describe():
            cli.note(self.stderr, line)
        environment = prepared.step.environment
        if environment.protected:
            if cli.ask(stdin, self.stderr, f"Type {environment.name} to proceed: ") != environment.name:
                raise CommandError("not confirmed: nothing was rolled back", returncode=cli.REFUSED)
        elif not prepared.database and cli.ask(stdin, self.stderr, "Proceed? [y/N] ").lower() not in (
            "y",
            "yes",
        ):
            raise CommandError("not confirmed: nothing was rolled back", returncode=cli.REFUSED)
        if prepared.database:
            return cli.ask(stdin, self.stderr, f"Type {prepared.confirmation} to roll back the code only: ")
        return ""
