"""Logging filters the settings wire in."""

from __future__ import annotations

import logging


class OneLineClientErrors(logging.Filter):
    """A refused request (4xx: a 403 for a user without the permission, a 404, a CSRF failure)
    is an ordinary event: log it as its one line, without the traceback of the PermissionDenied
    or Http404 that Django attaches. Server errors (5xx) keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and status < 500:
            record.exc_info = None
            record.exc_text = None
        return True


class NoBrokerHostnameNotice(logging.Filter):
    """kombu warns "No hostname was supplied" whenever it opens a connection to a broker URL
    without a host: always so for the embedded filesystem broker (`filesystem:///path`, which
    Celery reads from CELERY_BROKER_URL as given), where no host is meant. The warning would
    otherwise open the output of every command that launches a step."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")
