"""`manage.py token create|revoke|list`: personal API tokens. `create` prints the token once."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from api import tokens
from api.models import ApiToken
from portal import commands
from releases import channel as channels
from releases import cli


class Command(commands.Command):
    help = (
        "Create, revoke and list personal API tokens. `create` prints the token once (only its hash "
        "is stored)."
    )

    def add_arguments(self, parser):
        sub = commands.subcommands(parser, dest="action", required=True, metavar="SUBCOMMAND")
        p = sub.add_parser("create", help="Create a token for a staff account; prints it once.")
        p.add_argument("--user", required=True, metavar="NAME", help="The staff account the token acts as.")
        p.add_argument("--name", required=True, metavar="LABEL", help="What it is for, e.g. ci or laptop.")
        p.add_argument(
            "--expires", default="90d", metavar="90d|12h", help="Lifetime (default 90d, at most 366d)."
        )
        p.add_argument("--read-only", action="store_true", help="The token only reads.")
        p = sub.add_parser("revoke", help="Revoke a token by its owner and name.")
        p.add_argument("--user", required=True, metavar="NAME")
        p.add_argument("--name", required=True, metavar="LABEL")
        p = sub.add_parser("list", help="Tokens (never the tokens themselves), or one account's.")
        p.add_argument("--user", metavar="NAME")
        p.add_argument("--json", action="store_true", help="Print one JSON document on stdout.")

    @channels.from_shell
    def handle(self, *args, action, **options):
        cli.refuse_unstorable(options)
        try:
            getattr(self, "_" + action)(**options)
        except tokens.TokenRefused as exc:
            raise CommandError(str(exc), returncode=cli.REFUSED) from None

    def _create(self, user, name, expires, read_only, **options):
        owner = _user(user)
        row, token = tokens.create(owner, name, lifetime=tokens.parse_lifetime(expires), read_only=read_only)
        self.stderr.write(
            f"Token {row} ({'read-only, ' if read_only else ''}expires {row.expires_at:%Y-%m-%d %H:%M} UTC). "
            "It is shown only now: store it as a secret (PORTAL_TOKEN).",
            style_func=lambda text: text,
        )
        self.stdout.write(token)

    def _revoke(self, user, name, **options):
        row = tokens.revoke_named(_user(user), name)
        self.stdout.write(f"Revoked {row}.")

    def _list(self, user, json, **options):
        rows = ApiToken.objects.select_related("user")
        if user:
            rows = rows.filter(user=_user(user))
        documents = [
            {
                "user": row.user.get_username(),
                "name": row.name,
                "state": row.state,
                "read_only": row.read_only,
                "created_at": row.created_at.isoformat(),
                "expires_at": row.expires_at.isoformat(),
                "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
                "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
            }
            for row in rows
        ]
        if json:
            return cli.emit_json(self.stdout, documents)
        for d in documents:
            self.stdout.write(
                f"{d['user']}/{d['name']:<20} {d['state']:<8} expires {d['expires_at']}"
                f"{' read-only' if d['read_only'] else ''} last used {d['last_used_at'] or 'never'}"
            )


def _user(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user {username!r}", returncode=cli.REFUSED)
    return user
