"""The subcommands and options of `manage.py release` (the leading underscore keeps Django from
taking this module for a command): the `portal` command's (portal_cli.args), with --user."""

from __future__ import annotations

from portal_cli.args import (
    controls,
    create,
    finalize,
    json_option,
    launch,
    preview,
    retry_failed,
    rollback_targets,
    skip,
    subcommand,
)

from portal import commands
from releases.runbook import ENVIRONMENTS

HELP_USER = "Staff account the action is recorded under (required; its permissions are checked)."


def add_arguments(parser) -> None:
    sub = commands.subcommands(parser, dest="action", required=True, metavar="SUBCOMMAND")
    _acting(create(sub))
    preview(sub)
    _launch(sub)
    for add in (finalize, controls, retry_failed, skip):
        add(sub, _acting)
    _approve(sub)
    _rollback(sub)
    json_option(subcommand(sub, "status", "The plan's steps, their states and counts."))
    json_option(sub.add_parser("list", help="Every release plan and its state."))


def _launch(sub) -> None:
    launch(
        sub,
        _acting,
        text="Launch a step or a stage. Asks for confirmation unless --yes (PROD: type its name).",
        stage_help="The environment's next step, then its following steps up to the next gate.",
        stages=[name for name, _, _ in ENVIRONMENTS],
    )


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
    rollback_targets(p)
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
