"""Options are never abbreviated (PRODUCT.md): argparse's prefix matching once took
`environment set PROD --verify` for `--verify-tls` (now `--verify on|off` is its own option). Every command, and every subcommand, refuses
an abbreviation instead of doing something else than was asked."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from releases.models import AuditEvent, Environment

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "args, abbreviated",
    [
        (["environment", "set", "PROD", "--verify-t", "--user", "admin"], "--verify-t"),
        (["environment", "set", "PROD", "--max-unv", "3", "--user", "admin"], "--max-unv"),
        (["environment", "set", "PROD", "--no-two", "--user", "admin"], "--no-two"),
        (["environment", "show", "--js"], "--js"),
        (["release", "approve", "2.8.5", "--step", "12", "--req", "5", "--user", "admin"], "--req"),
        (["release", "launch", "2.8.5", "--stage", "DEV", "--user", "admin", "--ye"], "--ye"),
        (["release", "status", "2.8.5", "--js"], "--js"),
        (["loadrunbook", "--upd"], "--upd"),
        (["atlas_simulator", "--port", "1", "--environment", "dev", "--sit", "3"], "--sit"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_an_abbreviated_option_is_refused_and_nothing_happens(args, abbreviated):
    with pytest.raises(CommandError, match=f"unrecognized arguments: {abbreviated}"):
        call_command(*args, stdout=StringIO(), stderr=StringIO())
    assert not AuditEvent.objects.exists()
    assert not Environment.objects.exists()


def test_whole_options_still_work():
    out = StringIO()
    call_command("loadrunbook", "--update", stdout=out)
    call_command("environment", "show", "PROD", "--json", stdout=out)
    assert '"name": "PROD"' in out.getvalue()
