"""Settings for the test suite: the portal's own settings with DEBUG on, as `make run` has it, so
the suite needs no SECRET_KEY and uses the embedded broker unless CELERY_BROKER_URL is set.

Worker processes started by the tests inherit DJANGO_SETTINGS_MODULE and so these settings.
"""

import os

os.environ.setdefault("DEBUG", "true")

from portal.settings import *  # noqa: E402,F403

# Sites updating at the simulators are verified in rounds this far apart (3 s in production).
ATLAS_VERIFY_POLL_SECONDS = 0.2
ATLAS_VERIFY_READ_SECONDS = 0.1
