"""The subcommands and options of `manage.py release` (the leading underscore keeps Django from
taking this module for a command): the `portal` command's (portal_cli.args), with --user."""

from __future__ import annotations

from portal_cli.args import create, json_option, preview, subcommand

from portal import commands
from releases.runbook import ENVIRONMENTS

HELP_USER = "Staff account the action is recorded under (required; its permissions are checked)."


def add_arguments(parser) -> None:
    sub = commands.subcommands(parser, dest="action", required=True, metavar="SUBCOMMAND")
    for add in (_create, preview, _launch, _finalize, _controls, _retry_failed, _skip, _approve, _rollback):
        add(sub)
    json_option(subcommand(sub, "status", "The plan's steps, their states and counts."))
    json_option(sub.add_parser("list", help="Every release plan and its state."))


def _create(sub) -> None:
    _acting(create(sub))


def _launch(sub) -> None:
    text = "Launch a step or a stage. Asks for confirmation unless --yes (PROD: type its name)."
    p = subcommand(sub, "launch", text)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--step", type=int, help="This step (1–14).")
    which.add_argument("--next", dest="next_step", action="store_true", help="The first step not yet done.")
    which.add_argument(
        "--stage",
        type=str.upper,
        choices=[name for name, _, _ in ENVIRONMENTS],
        help="The environment's next step, then its following steps up to the next gate.",
    )
    _acting(p, yes=True, wait=True)


def _finalize(sub) -> None:
    p = subcommand(sub, "finalize", "Record the finalized release (step 7): tag and commit.")
    p.add_argument("--tag", required=True)
    p.add_argument("--commit", required=True, help="Full 40-character SHA of the merge commit.")
    _acting(p)


def _controls(sub) -> None:
    for action, text in (
        ("pause", "Pause the running step after the sites in flight."),
        ("abort", "Abort the running or paused step."),
        ("resume", "Resume the paused step."),
    ):
        _acting(subcommand(sub, action, text), wait=action == "resume")


def _retry_failed(sub) -> None:
    p = subcommand(sub, "retry-failed", "Retry a paused or failed step's failed sites.")
    p.add_argument("--step", type=int, required=True)
    _acting(p, wait=True)


def _skip(sub) -> None:
    p = subcommand(sub, "skip", "Skip a step, with a recorded reason.")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--reason", required=True, help="Why the step is skipped (recorded in the audit).")
    _acting(p)


def _approve(sub) -> None:
    text = (
        "Approve the request waiting under the two-person rule: shows it and asks, unless --request names it."
    )
    p = subcommand(sub, "approve", text)
    p.add_argument("--step", type=int, required=True)
    text = "The request to approve (as `release status` shows it)."
    p.add_argument("--request", type=int, metavar="ID", help=text)
    _acting(p)


def _rollback(sub) -> None:
    text = (
        "Put sites of an update step back on the code item each was on before the step, "
        "and verify them. Asks for confirmation unless --yes."
    )
    p = subcommand(sub, "rollback", text)
    p.add_argument("--step", type=int, required=True, help="The update step (4, 6, 11, 14).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="Every site that failed in the step.")
    which.add_argument(
        "--sites", type=lambda text: text.split(","), metavar="PATH[,PATH...]", help="These sites."
    )
    _acting(p, yes=True, wait=True)


def _acting(parser, *, yes: bool = False, wait: bool = False) -> None:
    """The options of a subcommand that acts: --user, then --yes and --wait where they apply, --json."""
    parser.add_argument("--user", required=True, metavar="NAME", help=HELP_USER)
    if yes:
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
    if wait:
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Block until the step (or stage) ends; non-zero unless it succeeded.",
        )
        parser.add_argument(
            "--timeout", type=float, metavar="SECONDS", help="With --wait: give up after this long."
        )
    json_option(parser)
