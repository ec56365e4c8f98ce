"""The package logger, and reports limited to one per reason per interval."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

#: Every message of the package goes through this logger.
logger = logging.getLogger("flask_tracking")


class EventLimiter:
    """Lets one report per key through every ``interval_seconds`` and counts the events held
    back in between, so that the next report can say how many there were (thread-safe)."""

    def __init__(self, interval_seconds: float = 60.0) -> None:
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def take(self, key: str, count: int = 1) -> int:
        """Add ``count`` events for ``key``; return how many to report now, those held back
        since the last report included (0: stay quiet)."""
        now = time.monotonic()
        with self._lock:
            total = self._held.pop(key, 0) + count
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = total
                return 0
            self._last[key] = now
            return total


class RateLimitedLog:
    """Logs a warning for a reason at most once per ``interval_seconds`` (thread-safe).

    Repeats inside the interval are counted and reported with the next line that gets through,
    so nothing is hidden, only folded.
    """

    def __init__(self, log: logging.Logger = logger, interval_seconds: float = 60.0) -> None:
        self._log = log
        self._limiter = EventLimiter(interval_seconds)

    def warning(self, reason: str, message: str, *args: Any, exc_info: bool = False) -> bool:
        """Log ``message % args`` unless ``reason`` was logged within the interval."""
        reported = self._limiter.take(reason)
        if not reported:
            return False
        folded = reported - 1  # the messages held back since the last one logged
        if folded:
            if not args:  # logging %-formats a message only when it has args
                message = message.replace("%", "%%")
            message += " (%d similar messages suppressed)"
            args = (*args, folded)
        self._log.warning(message, *args, exc_info=exc_info)
        return True
