"""The Celery application `portal`: `celery -A portal worker` starts a worker."""

import logging
import os

from celery import Celery
from celery.signals import celeryd_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger("portal.celery")


@celeryd_init.connect
def _log_broker_choice(**kwargs) -> None:
    from django.conf import settings

    logger.warning("Celery broker: %s", settings.CELERY_BROKER_DESCRIPTION)
