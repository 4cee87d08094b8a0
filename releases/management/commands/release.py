"""`manage.py release …`: the release operations of the admin, for the command line and automation.

Every mutating subcommand takes `--user`, the staff account the action is recorded under; the
services check its permissions exactly as the admin does and audit refusals too.
"""

from __future__ import annotations

import sys

from django.core.management.base import CommandError
from portal_cli.text import status_lines

from portal import commands
from releases import channel as channels
from releases import cli, guidance, reports, services
from releases.models import ReleasePlan
from releases.services import approvals
from releases.states import StepState

from . import _release_args
from ._release_rollback import RollbackSubcommand


class Command(RollbackSubcommand, commands.Command):
    help = (
        "Create, preview, launch and follow release plans. Mutating subcommands require --user. "
        "Exit codes: 0 done, 1 refused or not succeeded, 2 bad usage, 3 --timeout passed."
    )
    stealth_options = ("stdin",)
    # The start-up checks (atlas.W00x) are for the web and worker processes and `manage.py check`;
    # here each refusal names its own cause in one line, without a block of warnings before it.
    requires_system_checks = []

    def add_arguments(self, parser):
        _release_args.add_arguments(parser)

    @channels.from_shell
    def handle(self, *args, action, **options):
        self.json = options.get("json", False)
        if options.get("timeout") is not None and not options.get("wait"):
            raise CommandError("--timeout only applies with --wait", returncode=2)
        cli.refuse_unstorable(options)
        with cli.refusals():
            getattr(self, "_" + action.replace("-", "_"))(**options)

    # -- subcommands ------------------------------------------------------------------------------

    def _create(self, version, commit, branch, git_url, profile, user, **options):
        acting = services.resolve_user(user)
        plan = services.create_plan(
            version, commit=commit, user=acting, branch=branch, git_url=git_url, profile=profile
        )
        if self.json:
            return cli.emit_json(self.stdout, reports.status(plan))
        self.stdout.write(
            self.style.SUCCESS(f"Created release {plan.version}")
            + f": branch {plan.release_branch} at {plan.release_commit} (step 1 recorded). "
            + guidance.next_command(plan)
        )

    def _preview(self, version, step, **options):
        plan = cli.get_plan(version)
        if step is not None:
            services.get_step(plan, step)  # refuses an unknown step number
        previews = reports.preview(plan, step)
        if self.json:
            cli.emit_json(self.stdout, previews)
        else:
            for preview in previews:
                self.stdout.write("\n".join(cli.describe_preview(preview)))
        # A step that could not be read from Atlas (no "action": not merely "nothing to update yet").
        unread = [p for p in previews if p.get("error") and "action" not in p]
        if unread:
            numbers = ", ".join(str(p["number"]) for p in unread)
            reasons = "; ".join(dict.fromkeys(p["error"] for p in unread))
            raise CommandError(f"could not preview step(s) {numbers}: {reasons}", returncode=cli.REFUSED)

    def _launch(self, version, user, step, next_step, stage, yes, wait, timeout, **options):
        plan = cli.get_plan(version)
        acting = services.resolve_user(user)
        if stage:
            target = services.next_step(plan, stage)
        elif next_step:
            target = services.next_step(plan)
        else:
            target = services.get_step(plan, step)
        # Refused (and audited) before anything is asked or read from Atlas.
        # (With --yes nothing is asked: the launch itself refuses what cannot happen.)
        prepared = services.prepare_launch(target, acting, stage=bool(stage), via="launch", strict=not yes,
                                           read_atlas=False)  # fmt: skip
        confirmed = None if yes else self._confirm(prepared, stdin=options.get("stdin", sys.stdin))
        outcome = services.launch(target, acting, stage=bool(stage), confirmed=confirmed)
        if self._approval_awaited(outcome.step, "launch", wait, timeout):
            return None
        if not wait:
            return self._launched(target, stage)
        self._follow(plan, target, stage=bool(stage), timeout=timeout, action="launch")

    def _approval_awaited(self, target, action: str, wait: bool, timeout) -> bool:
        """After an operation that the two-person rule may have turned into a request: without
        --wait, say so and return True (done); with --wait, wait for the decision (raising unless
        approved) and return False (follow the step as usual)."""
        waiting = approvals.pending_request(target)
        if waiting is None:
            return False
        if not wait:
            self._done(
                target, action, f"{waiting.what} requested (#{waiting.pk}): another user must approve it"
            )
            return True
        report = lambda line: cli.note(self.stderr, line)  # noqa: E731
        decided = cli.wait_for_approval(target, waiting, report, timeout=timeout)
        if decided == "timeout":
            raise CommandError(
                f"timed out after {timeout:g}s waiting for the approval of step {target.number} "
                "(the request stays open)",
                returncode=cli.TIMED_OUT,
            )
        if decided != "approved":
            raise CommandError(f"step {target.number} was not approved ({decided})", returncode=cli.REFUSED)
        return False

    def _confirm(self, prepared, *, stdin) -> dict:
        """Show the blast radius and ask; the counts the operator confirmed."""
        cli.require_terminal(stdin)
        radius = prepared.preview()  # one credentials probe per environment
        cli.confirm_launch(prepared.steps, radius["previews"], stdin, self.stderr)
        return prepared.confirmed

    def _launched(self, step, stage) -> None:
        if self.json:
            return cli.emit_json(self.stdout, self._step_document(step, "launch"))
        what = f"stage {stage} from step {step.number}" if stage else f"step {step.number}"
        self.stdout.write(
            self.style.SUCCESS(f"Launched {step.plan.version} {what}")
            + f" [{step.environment}] {step.title}: {step.state}, task {step.task_ids[-1]}. "
            + guidance.next_command(step.plan)
        )

    def _finalize(self, version, tag, commit, user, **options):
        plan = cli.get_plan(version)
        acting = services.resolve_user(user)
        plan = services.finalize(plan, tag=tag, commit=commit, user=acting)
        if self.json:
            return cli.emit_json(self.stdout, self._step_document(services.get_step(plan, 7), "finalize"))
        self.stdout.write(
            self.style.SUCCESS(f"Finalized {plan.version}")
            + f": tag {plan.final_tag} at {plan.final_commit}; steps 8–14 deploy this commit. "
            + guidance.next_command(plan)
        )

    def _approve(self, version, step, user, request, **options):
        plan = cli.get_plan(version)
        acting = services.resolve_user(user)
        target = services.get_step(plan, step)
        if request is None:
            request = self._ask_approval(target, acting, options.get("stdin", sys.stdin))
        target = approvals.approve(target, acting, request_id=request)
        self._done(target, "approve", f"approved request #{request}: {target.state}")

    def _ask_approval(self, step, user, stdin) -> int:
        """Show the request waiting on `step` and ask; its id is what the approval then names."""
        waiting = approvals.pending_request(step)
        if waiting is None:
            approvals.approve(step, user, request_id=None)  # refused and audited: nothing waits
        line = approvals.describe_request(waiting)
        if not (hasattr(stdin, "isatty") and stdin.isatty()):
            raise CommandError(
                f"{line}\nrefusing to approve without seeing it: stdin is not a terminal "
                f"(pass --request {waiting.pk} to approve this request)",
                returncode=cli.REFUSED,
            )
        cli.note(self.stderr, line)
        if cli.ask(stdin, self.stderr, f"Approve request #{waiting.pk}? [y/N] ").lower() not in ("y", "yes"):
            raise CommandError("not approved: nothing was changed", returncode=cli.REFUSED)
        return waiting.pk

    def _pause(self, version, user, **options):
        step = services.pause(cli.get_plan(version), services.resolve_user(user))
        self._done(step, "pause", "pause requested: the step stops after the sites in flight")

    def _abort(self, version, user, **options):
        step = services.abort(cli.get_plan(version), services.resolve_user(user))
        text = (
            "aborted"
            if step.state == StepState.ABORTED
            else "abort requested: the step stops after the sites in flight"
        )
        self._done(step, "abort", text)

    def _resume(self, version, user, wait, timeout, **options):
        plan = cli.get_plan(version)
        step = services.resume(plan, services.resolve_user(user))
        if self._approval_awaited(step, "resume", wait, timeout):
            return None
        if wait:
            return self._follow(plan, step, stage=step.continue_stage, timeout=timeout, action="resume")
        self._done(step, "resume", "resumed")

    def _retry_failed(self, version, step, user, wait, timeout, **options):
        plan = cli.get_plan(version)
        acting = services.resolve_user(user)
        target = services.retry_failed(services.get_step(plan, step), acting)
        if self._approval_awaited(target, "retry-failed", wait, timeout):
            return None
        if wait:
            return self._follow(
                plan, target, stage=target.continue_stage, timeout=timeout, action="retry-failed"
            )
        self._done(target, "retry-failed", "retrying its failed sites")

    def _skip(self, version, step, reason, user, **options):
        plan = cli.get_plan(version)
        acting = services.resolve_user(user)
        target = services.skip(services.get_step(plan, step), acting, reason)
        self._done(target, "skip", f"skipped ({reason})")

    def _status(self, version, **options):
        plan = cli.get_plan(version)
        status = reports.status(plan)
        if self.json:
            return cli.emit_json(self.stdout, status)
        for line in status_lines(status):
            self.stdout.write(line)
        self.stdout.write(guidance.next_command(plan))

    def _list(self, **options):
        plans = ReleasePlan.objects.prefetch_related("steps").order_by("-created_at")
        rows = [
            {
                "version": p.version,
                "state": p.state,
                "created_by": p.created_by_username,
                "created_at": p.created_at.isoformat(),
                "final_tag": p.final_tag or None,
            }
            for p in plans
        ]
        if self.json:
            return cli.emit_json(self.stdout, rows)
        if not rows:
            self.stdout.write("No release plans yet: release create VERSION --commit SHA --user NAME")
        for row in rows:
            self.stdout.write(
                f"{row['version']:<12} {row['state']:<10} by {row['created_by']} at {row['created_at']}"
            )

    # -- output -----------------------------------------------------------------------------------

    def _follow(self, plan, step, *, stage: bool, timeout, action: str) -> None:
        waiter = cli.StepWaiter(report=lambda line: cli.note(self.stderr, line), timeout=timeout)
        result = waiter.follow(step, stage=stage)
        last = result.steps[-1]
        if self.json:
            cli.emit_json(
                self.stdout,
                {
                    "version": plan.version,
                    "action": action,
                    "succeeded": result.succeeded,
                    "state": last.state,
                    "steps": [reports.step_status(s) for s in result.steps],
                },
            )
        if not result.succeeded:
            raise CommandError(result.message, returncode=cli.TIMED_OUT if result.timed_out else cli.REFUSED)
        if not self.json:
            numbers = ", ".join(str(s.number) for s in result.steps)
            self.stdout.write(
                self.style.SUCCESS(f"{plan.version}: step(s) {numbers} succeeded")
                + ". "
                + guidance.next_command(plan)
            )

    def _done(self, step, action: str, text: str) -> None:
        if self.json:
            return cli.emit_json(self.stdout, self._step_document(step, action))
        self.stdout.write(
            f"{step.plan.version} step {step.number} [{step.environment or '-'}]: {text}. "
            + guidance.next_command(step.plan)
        )

    @staticmethod
    def _step_document(step, action: str) -> dict:
        return {"version": step.plan.version, "action": action, "step": reports.step_status(step)}
