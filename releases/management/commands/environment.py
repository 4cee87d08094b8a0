"""`manage.py environment show|set`: read and change an Atlas environment's settings (audited).

No password is ever shown or stored: only the name of the variable that holds it, and whether
that variable is set in this process's environment.
"""

from __future__ import annotations

import argparse
import os

from django.core.management.base import CommandError
from portal_cli.args import on_off

from portal import commands
from releases import channel as channels
from releases import cli, services
from releases.models import Environment
from releases.states import FailurePolicy

# option dest -> model field, for the settings `set` copies as given.
SETTABLE = {
    "parallelism": "parallelism",
    "batch_pause": "batch_pause_seconds",
    "deploy_wait": "deploy_wait_seconds",
    "pool_wait": "pool_wait_seconds",
    "url": "api_url",
    "site_url": "site_url",
    "username": "username",
    "password_env": "password_env",
    "verify_tls": "verify_tls",
    "read_timeout": "read_timeout_seconds",
    "max_attempts": "max_attempts",
    "slack_webhook_env": "slack_webhook_env",
    "failure_policy": "failure_policy",
    "protected": "protected",
    "two_person": "two_person",
    "verify": "verify",
    "verify_timeout": "verify_timeout_seconds",
    "max_unverified": "max_unverified",
    "canary": "canary",
}


class Command(commands.Command):
    help = "Show or change an Atlas environment's settings. `set` requires --user and is audited."

    def add_arguments(self, parser):
        sub = commands.subcommands(parser, dest="action", required=True, metavar="SUBCOMMAND")
        p = sub.add_parser("show", help="Show one environment, or all of them.")
        p.add_argument("name", nargs="?", metavar="NAME", help="DEV, TEST or PROD (default: all).")
        p.add_argument("--json", action="store_true", help="Print one JSON document on stdout.")
        p = sub.add_parser("set", help="Change an environment's settings (audited).")
        p.add_argument("name", metavar="NAME", help="DEV, TEST or PROD.")
        _add_pacing(p)
        _add_connection(p)
        _add_safeguards(p)
        p.add_argument(
            "--user", required=True, metavar="NAME", help="Staff account the change is recorded under."
        )

    @channels.from_shell
    def handle(self, *args, action, **options):
        cli.refuse_unstorable(options)
        with cli.refusals():
            if action == "show":
                return self._show(options["name"], options["json"])
            return self._set(options)

    def _show(self, name: str | None, as_json: bool) -> None:
        envs = [_get_environment(name)] if name else list(Environment.objects.all())
        documents = [describe(env) for env in envs]
        if as_json:
            return cli.emit_json(self.stdout, documents[0] if name else documents)
        for document in documents:
            self.stdout.write(document["name"])
            for key, value in document.items():
                if key != "name":
                    self.stdout.write(f"  {key}: {'' if value is None else value}")

    def _set(self, options: dict) -> None:
        user = services.resolve_user(options["user"])
        env = _get_environment(options["name"])
        requested = {
            field: options[dest] for dest, field in SETTABLE.items() if options.get(dest) is not None
        }
        if options.get("failure_threshold") is not None:
            requested["failure_threshold"] = options["failure_threshold"]
        if not requested:
            raise CommandError("nothing to change: give at least one setting", returncode=cli.REFUSED)
        changes = services.change_environment(env, user, requested, via="manage.py environment set")
        if not changes:
            self.stdout.write(f"{env.name}: no change")
            return
        for field, (old, new) in changes.items():
            self.stdout.write(f"{env.name} {field}: {old} -> {new}")


def _add_pacing(p) -> None:
    """How fast a step goes, and when it stops for failures."""
    p.add_argument("--parallelism", type=int, metavar="N", help="Atlas writes in flight at once (≥ 1).")
    p.add_argument("--batch-pause", type=float, metavar="SECONDS", help="Pause between batches.")
    p.add_argument(
        "--failure-threshold",
        metavar="N|P%|none",
        help="Pause a step after N failed sites, or P%% of its sites; `none` for no limit.",
    )
    p.add_argument(
        "--failure-policy",
        choices=FailurePolicy.values,
        help="What a step becomes when sites still fail after retries.",
    )
    p.add_argument("--deploy-wait", type=float, metavar="SECONDS", help="Wait after a code deploy.")
    p.add_argument("--pool-wait", type=float, metavar="SECONDS", help="Wait for the pool to refill.")


def _add_connection(p) -> None:
    """How the portal reaches Atlas (and Slack)."""
    p.add_argument("--url", metavar="URL", help="Atlas API URL.")
    p.add_argument("--site-url", metavar="URL", help="Public base URL of the sites.")
    p.add_argument("--username", metavar="U", help="Atlas username.")
    p.add_argument("--password-env", metavar="VAR", help="Variable holding the Atlas password.")
    p.add_argument("--slack-webhook-env", metavar="VAR", help="Variable holding the Slack webhook.")
    p.add_argument("--read-timeout", type=float, metavar="SECONDS", help="Atlas read timeout.")
    p.add_argument("--max-attempts", type=int, metavar="N", help="Attempts per Atlas request.")
    p.add_argument("--verify-tls", action=argparse.BooleanOptionalAction, help="Verify Atlas's TLS.")


def _add_safeguards(p) -> None:
    """What guards a launch, and what tells that a site's update worked."""
    switch = argparse.BooleanOptionalAction
    p.add_argument(
        "--protected",
        action=switch,
        help="Typed confirmation and the protected-launch permission are required.",
    )
    p.add_argument(
        "--two-person", action=switch, help="A launch needs a second person's approval (`release approve`)."
    )
    _on_off(p, "--verify", "A site succeeds only once its report and its page show the release (default on).")
    p.add_argument(
        "--verify-timeout", type=float, metavar="SECONDS", help="Verification deadline (default 900)."
    )
    p.add_argument(
        "--max-unverified",
        type=int,
        metavar="K",
        help="At most K sites PATCHed and not yet verified at once (default 4 × parallelism).",
    )
    _on_off(
        p, "--canary", "Pause an update step once its first batch is verified, until continued (PROD: on)."
    )


def _on_off(p, option: str, text: str) -> None:
    p.add_argument(option, type=on_off, metavar="on|off", help=text)


def describe(env: Environment) -> dict:
    """Every setting of the row, plus whether its secret variables are set (never their values)."""
    document = {f.name: getattr(env, f.name) for f in Environment._meta.concrete_fields if f.name != "id"}
    document["unverified_limit"] = env.unverified_limit()  # max_unverified, or its default
    document["password_set"] = bool(os.environ.get(env.password_env))
    document["slack_webhook_set"] = bool(env.slack_webhook_env and os.environ.get(env.slack_webhook_env))
    return document


def _get_environment(name: str) -> Environment:
    env = Environment.objects.filter(name__iexact=name).first()
    if env is None:
        known = ", ".join(Environment.objects.values_list("name", flat=True)) or "none: run loadrunbook"
        raise CommandError(f"no environment {name!r} (known: {known})", returncode=cli.REFUSED)
    return env
