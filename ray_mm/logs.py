"""Logging helpers for the ``ray_mm`` logger tree (Ray collects each actor's log per worker).

``RateLimitedLog`` keeps a message that can repeat thousands of times a second
(admission refusals under overload) to one line per interval, with a count of
what it held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """Log through ``logger`` at most once per ``every_s``; the next line says how many were suppressed."""

    def __init__(self, logger: logging.Logger, level: int, every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.level, self.every_s, self.clock = logger, level, every_s, clock
        self.suppressed = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def log(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless one was logged less than ``every_s`` ago; whether it was logged."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.every_s:
                self.suppressed += 1
                return False
            held, self.suppressed, self._last = self.suppressed, 0, now
        if held:
            msg += f" ({held} similar messages suppressed in the last {self.every_s:g} s)"
        self.logger.log(self.level, msg, *args)
        return True
