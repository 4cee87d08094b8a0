#!/usr/bin/env python
"""Django's command-line utility for the Express Release Portal."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from portal.startup import configured_or_exit, guarded

    configured_or_exit()
    from django.core.management import execute_from_command_line

    guarded(lambda: execute_from_command_line(sys.argv))


if __name__ == "__main__":
    main()
