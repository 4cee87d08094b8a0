"""The web process's entry point: `gunicorn portal.wsgi` (see the README's Deployment section)."""

import os

from django.core.wsgi import get_wsgi_application

from portal.startup import configured_or_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
configured_or_exit()
application = get_wsgi_application()
