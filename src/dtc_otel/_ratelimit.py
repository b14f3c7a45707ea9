"""Rate-limited warnings: one line per interval with a count, never a flood.

When the collector is down, the exporter fails every few seconds for as long
as the outage lasts. Each failure is counted, but only the first one in an
interval is logged, and the next line reports how many were held back. Tracebacks
are dropped from these lines because the same one repeated is noise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

__all__ = ["RateLimitFilter", "failure_counts", "log_once_per_interval", "set_interval"]

_DEFAULT_INTERVAL = 60.0


class _Limiter:
    def __init__(self) -> None:
        self.interval = _DEFAULT_INTERVAL
        self._lock = threading.Lock()
        # key -> (start of the current interval, lines held back in it)
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}
        self.totals: Counter[str] = Counter()

    def admit(self, key: tuple[str, str]) -> tuple[bool, int]:
        """Return whether a line for *key* may be written now, and how many were held back."""
        now = time.monotonic()
        with self._lock:
            self.totals[key[1]] += 1
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                held_back = window[1] if window else 0
                self._windows[key] = (now, 0)
                return True, held_back

            self._windows[key] = (window[0], window[1] + 1)
            return False, 0

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()
            self.totals.clear()


_limiter = _Limiter()


def set_interval(seconds: float) -> None:
    """Set the interval, in seconds, within which a repeated line is logged once."""
    _limiter.interval = seconds


def failure_counts() -> dict[str, int]:
    """Return how often each rate-limited message occurred in this process."""
    with _limiter._lock:
        return dict(_limiter.totals)


def log_once_per_interval(
    logger: logging.Logger, message: str, *, level: int = logging.WARNING, exc_info: bool = False, **fields: Any
) -> None:
    """Log *message* at most once per interval, with the count of lines held back.

    With *exc_info*, only the exception's type and message are added; the
    traceback is logged at DEBUG level, so it is available without flooding.
    """
    admitted, held_back = _limiter.admit((logger.name, message))
    if not admitted:
        return

    extra = dict(fields)
    if held_back:
        extra["repeated"] = held_back
    if exc_info:
        import sys

        error = sys.exc_info()[1]
        if error is not None:
            extra["error_type"] = type(error).__qualname__
            extra["error"] = str(error)[:200]
        logger.debug(message, exc_info=True)
    suffix = "".join(f" {key}={value}" for key, value in extra.items())
    logger.log(level, (message + suffix).replace("%", "%%"))


class RateLimitFilter(logging.Filter):
    """Let through one record per logger and message template per interval.

    A record that passes after others were held back gets a
    ``(N similar lines held back)`` suffix, and its traceback is removed so a
    failing exporter writes one line, not thirty.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True

        admitted, held_back = _limiter.admit((record.name, str(record.msg)))
        if not admitted:
            return False

        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            detail = f"{type(error).__qualname__}: {str(error)[:200]}".replace("%", "%%")
            record.msg = f"{record.msg} ({detail})"
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if held_back:
            record.msg = f"{record.msg} ({held_back} similar lines held back)"

        return True
