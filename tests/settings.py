"""Settings for the test suite: the portal's own settings with DEBUG on, as `make run` has it, so
the suite needs no SECRET_KEY and uses the embedded broker unless CELERY_BROKER_URL is set.

Worker processes started by the tests inherit DJANGO_SETTINGS_MODULE and so these settings.
"""

import os

os.environ.setdefault("DEBUG", "true")

from django.conf import global_settings  # noqa: E402

from portal.settings import *  # noqa: E402,F403

# Sites updating at the simulators are verified in rounds this far apart (3 s in production).
ATLAS_VERIFY_POLL_SECONDS = 0.2
ATLAS_VERIFY_READ_SECONDS = 0.1

# Hashing a password the production way (PBKDF2, a million rounds) costs a quarter of a CPU second;
# the suite creates and logs in hundreds of users. The tests hash with MD5 (Django's advice for
# tests) and still accept the production hashers' passwords (a subprocess on the production
# settings may have made them). Worker processes started by the tests use these settings too.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *global_settings.PASSWORD_HASHERS]
