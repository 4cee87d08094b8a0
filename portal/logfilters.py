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
