"""The portal's management commands take their options whole: argparse's prefix matching would
take `--verify` for `--verify-tls`, or `--re` for `--request`, and do something else than asked."""

from django.core.management.base import BaseCommand, CommandParser


class WholeOptionsParser(CommandParser):
    """A subcommand's parser that refuses abbreviated options."""

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "allow_abbrev": False})


def subcommands(parser: CommandParser, **kwargs):
    """`parser.add_subparsers(**kwargs)` whose subcommands refuse abbreviated options too."""
    return parser.add_subparsers(parser_class=WholeOptionsParser, **kwargs)


class Command(BaseCommand):
    """The base of the portal's commands: options are never abbreviated (`subcommands` for
    commands that have subcommands)."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        return super().create_parser(prog_name, subcommand, allow_abbrev=False, **kwargs)
