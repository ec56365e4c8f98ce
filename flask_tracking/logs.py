"""The package logger, and warnings limited to one per reason per interval."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

#: Every message of the package goes through this logger.
logger = logging.getLogger("flask_tracking")


class RateLimitedLog:
    """Logs a warning for a reason at most once per ``interval_seconds`` (thread-safe).

    Repeats inside the interval are counted and reported with the next line that gets through,
    so nothing is hidden, only folded.
    """

    def __init__(self, log: logging.Logger = logger, interval_seconds: float = 60.0) -> None:
        self._log = log
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: Any, exc_info: bool = False) -> bool:
        """Log ``message % args`` unless ``reason`` was logged within the interval."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._interval:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return False
            self._last[reason] = now
            folded = self._suppressed.pop(reason, 0)
        if folded:
            if not args:  # logging %-formats a message only when it has args
                message = message.replace("%", "%%")
            message += " (%d similar messages suppressed)"
            args = (*args, folded)
        self._log.warning(message, *args, exc_info=exc_info)
        return True
