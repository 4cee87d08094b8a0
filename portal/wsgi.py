"""The web process's entry point: `gunicorn portal.wsgi:application` (README, "Deployment")."""

import os

from django.core.wsgi import get_wsgi_application

from portal.startup import configured_or_exit

# gunicorn's "App failed to load": its master stops, rather than rebooting workers in a loop.
APP_LOAD_ERROR = 4

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
try:
    configured_or_exit()
except SystemExit:
    raise SystemExit(APP_LOAD_ERROR) from None
application = get_wsgi_application()
