"""The command line: the subcommands and options of `manage.py release` (without `--user`: the
token says who), plus `environment show|set`. Options are never abbreviated.

`manage.py release` and `manage.py environment` build their subcommands with the public functions
here (`subcommand`, `create`, `preview`, `launch`, …, `json_option`, `on_off`), so both say the same."""

from __future__ import annotations

import argparse

from . import __version__

ENVIRONMENTS = ("DEV", "TEST", "PROD")


class Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "allow_abbrev": False})


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="portal",
        description="The Express Release Portal's release operations over its HTTP API. Exit codes: "
        "0 done, 1 refused or not succeeded, 2 bad usage, 3 --timeout passed.",
    )
    p.add_argument("--url", help="The portal's base URL (default: $PORTAL_URL).")
    p.add_argument("--token", help="A personal token (default: $PORTAL_TOKEN).")
    p.add_argument(
        "--allow-http", action="store_true", help="Allow plain http:// to a host other than localhost."
    )
    p.add_argument("--version", action="version", version=f"portal {__version__}")
    sub = p.add_subparsers(dest="action", required=True, metavar="SUBCOMMAND", parser_class=Parser)
    for add in (
        _create,
        preview,
        launch,
        finalize,
        controls,
        retry_failed,
        skip,
        _requests,
        _rollback,
        _reports,
        _environment,
    ):
        add(sub)
    return p


def create(sub) -> argparse.ArgumentParser:
    """`create VERSION` and what the plan is made of; the caller adds who acts and --json."""
    s = subcommand(sub, "create", "Create a release plan; step 1 (the branch) is recorded done.")
    s.add_argument("--commit", required=True, help="Full 40-character SHA of the release-branch HEAD.")
    s.add_argument("--branch", default="", help="Default: release/VERSION.")
    s.add_argument("--git-url", default="", help="Default: https://github.com/CuBoulder/express.git.")
    s.add_argument("--profile", default="express", help="Install profile name (default: express).")
    return s


def _create(sub) -> None:
    json_option(create(sub))


def preview(sub) -> None:
    """`preview VERSION [--step N] [--json]`: it only reads, so it is the same for everyone."""
    s = subcommand(sub, "preview", "Show what a step (or every step) would do, read from Atlas.")
    s.add_argument("--step", type=int, help="Only this step (1–14).")
    json_option(s)


# The subcommands below take `finish(parser, yes=…, wait=…)`, which adds a subcommand's last
# options: here --yes, --wait and --json; in `manage.py release`, --user first.


def launch(
    sub,
    finish=None,
    *,
    text: str = "Launch a step or a stage. Asks for confirmation unless --yes.",
    stage_help: str = "The environment's stage.",
    stages=ENVIRONMENTS,
) -> None:
    s = subcommand(sub, "launch", text)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--step", type=int, help="This step (1–14).")
    which.add_argument("--next", dest="next_step", action="store_true", help="The first step not yet done.")
    which.add_argument("--stage", type=str.upper, choices=stages, help=stage_help)
    (finish or _finish)(s, yes=True, wait=True)


def finalize(sub, finish=None) -> None:
    s = subcommand(sub, "finalize", "Record the finalized release (step 7): tag and commit.")
    s.add_argument("--tag", required=True)
    s.add_argument("--commit", required=True, help="Full 40-character SHA of the merge commit.")
    (finish or _finish)(s)


def controls(sub, finish=None) -> None:
    for action, text in (
        ("pause", "Pause the running step after the sites in flight."),
        ("abort", "Abort the running or paused step."),
        ("resume", "Resume the paused step."),
    ):
        (finish or _finish)(subcommand(sub, action, text), wait=action == "resume")


def retry_failed(sub, finish=None) -> None:
    s = subcommand(sub, "retry-failed", "Retry a paused or failed step's failed sites.")
    s.add_argument("--step", type=int, required=True)
    (finish or _finish)(s, wait=True)


def skip(sub, finish=None) -> None:
    s = subcommand(sub, "skip", "Skip a step, with a recorded reason.")
    s.add_argument("--step", type=int, required=True)
    s.add_argument("--reason", required=True, help="Why the step is skipped (recorded in the audit).")
    (finish or _finish)(s)


def _requests(sub) -> None:
    for action, text in (
        ("approve", "Approve the request waiting under the two-person rule: shows it and asks, unless "
                    "--request names it."),
        ("withdraw", "Withdraw the request waiting for approval (yours, or as an approver)."),
    ):  # fmt: skip
        s = subcommand(sub, action, text)
        s.add_argument("--step", type=int, required=True)
        s.add_argument("--request", type=int, metavar="ID", help="The request (as `portal status` shows it).")
        json_option(s)


def _rollback(sub) -> None:
    s = subcommand(sub, "rollback", "Put sites of an update step back on their earlier code item.")
    rollback_targets(s)
    _finish(s, yes=True, wait=True)


def rollback_targets(s) -> None:
    """`rollback`'s step and sites: --failed, or --sites PATH,PATH."""
    s.add_argument("--step", type=int, required=True, help="The update step (4, 6, 11, 14).")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="Every site that failed in the step.")
    which.add_argument(
        "--sites", type=lambda text: text.split(","), metavar="PATH[,PATH...]", help="These sites."
    )


def _reports(sub) -> None:
    s = subcommand(sub, "status", "The plan's steps, their states and counts.")
    json_option(s)
    s = sub.add_parser("list", help="Every release plan and its state.")
    json_option(s)


def _environment(sub) -> None:
    env = sub.add_parser("environment", help="Show or change an Atlas environment's settings.")
    esub = env.add_subparsers(
        dest="environment_action", required=True, metavar="SUBCOMMAND", parser_class=Parser
    )
    s = esub.add_parser("show", help="Show one environment, or all of them.")
    s.add_argument("name", nargs="?", metavar="NAME")
    json_option(s)
    s = esub.add_parser("set", help="Change an environment's settings (audited).")
    s.add_argument("name", metavar="NAME")
    for option, kind in SETTINGS.items():
        if kind is bool:
            s.add_argument(f"--{option}", action=argparse.BooleanOptionalAction)
        elif kind == "on|off":
            s.add_argument(f"--{option}", type=on_off, metavar="on|off")
        else:
            s.add_argument(f"--{option}", type=kind)
    json_option(s)


# `environment set`'s options (the API takes them with underscores).
SETTINGS = {
    "parallelism": int,
    "batch-pause": float,
    "failure-threshold": str,
    "failure-policy": str,
    "deploy-wait": float,
    "pool-wait": float,
    "url": str,
    "site-url": str,
    "username": str,
    "password-env": str,
    "slack-webhook-env": str,
    "read-timeout": float,
    "max-attempts": int,
    "verify-tls": bool,
    "protected": bool,
    "two-person": bool,
    "verify": "on|off",
    "verify-timeout": float,
    "max-unverified": int,
    "canary": "on|off",
}


def on_off(text: str) -> bool:
    """`on` or `off` (as PRODUCT.md writes them), for the settings that take one."""
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")
    return value == "on"


def subcommand(sub, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand of one release: its parser, with the VERSION it acts on."""
    p = sub.add_parser(name, help=text)
    p.add_argument("version", metavar="VERSION", help="The release version, e.g. 2.8.5.")
    return p


def _finish(p, *, yes: bool = False, wait: bool = False) -> None:
    """A subcommand's last options: --yes and --wait where they apply, then --json."""
    if yes:
        _yes(p)
    if wait:
        _wait(p)
    json_option(p)


def json_option(p) -> None:
    p.add_argument("--json", action="store_true", help="Print one JSON document on stdout.")


def _yes(p) -> None:
    p.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
    p.add_argument(
        "--confirm-environment",
        metavar="NAME",
        default="",
        help="With --yes on a protected environment (PROD): its name, as you would type it.",
    )


def _wait(p) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="Block until the step (or stage) ends; non-zero unless it succeeded.",
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="With --wait: give up after this long.")
