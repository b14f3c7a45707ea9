"""Retry logging: one line per retry decision, summaries for tight loops, one line on give-up.

A loop that retries every few milliseconds would otherwise write a line per
attempt. :class:`RetryLog` writes the first retry decision of an operation,
then at most one summary per interval (how many attempts, which attempt
numbers, the last error), and one line when the operation succeeds after
retries or gives up. Every attempt is still recorded as a span event on the
current span, so a trace shows each one.

Use it with tenacity (``before_sleep=retry_log.before_sleep``,
``retry_error_callback=retry_log.give_up``) or call it from your own loop.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from opentelemetry import trace

from dtc_otel._redaction import default_redactor

__all__ = ["RetryLog"]

_log = structlog.get_logger("dtc_otel.retry")
_DEFAULT_SUMMARY_INTERVAL = 5.0
_MESSAGE_CHARS = 200


def _short(error: BaseException | None) -> tuple[str | None, str | None]:
    if error is None:
        return None, None

    return type(error).__qualname__, default_redactor().redact_text(str(error))[:_MESSAGE_CHARS]


class RetryLog:
    """Log the retry decisions of one operation without flooding.

    **Parameters:**

    * **operation** - a short name for what is retried, such as ``charge_card``.
    * **summary_interval** - seconds between summary lines while retries continue.
    * **fields** - extra fields for every line, such as ``partner="halo"``.
    """

    def __init__(self, operation: str, *, summary_interval: float = _DEFAULT_SUMMARY_INTERVAL, **fields: Any) -> None:
        if summary_interval <= 0:
            raise ValueError(f"invalid summary_interval={summary_interval}: expected a positive number of seconds")
        self.operation = operation
        self.summary_interval = summary_interval
        self.fields = fields
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._first_logged = False
        self._held_back = 0
        self._first_held_attempt: int | None = None
        self._last_summary = 0.0
        self.attempts = 0

    def retrying(self, attempt: int, error: BaseException | None, wait: float) -> None:
        """Record that *attempt* failed with *error* and the next starts in *wait* seconds."""
        error_type, message = _short(error)
        _span_event("retry", attempt, error_type, message, wait)
        now = time.monotonic()
        with self._lock:
            self.attempts = attempt
            if not self._first_logged:
                self._first_logged = True
                self._last_summary = now
                log_first = True
            elif now - self._last_summary >= self.summary_interval:
                held_back, first_held = self._held_back + 1, self._first_held_attempt or attempt
                self._held_back, self._first_held_attempt, self._last_summary = 0, None, now
                log_first = None
            else:
                self._held_back += 1
                if self._first_held_attempt is None:
                    self._first_held_attempt = attempt
                return

        if log_first:
            _log.warning(
                "retrying", operation=self.operation, attempt=attempt, wait_s=round(wait, 3),
                error_type=error_type, error=message, **self.fields,
            )  # fmt: skip
        else:
            _log.warning(
                "still retrying", operation=self.operation, attempts=held_back, first_attempt=first_held,
                attempt=attempt, wait_s=round(wait, 3), error_type=error_type, error=message, **self.fields,
            )  # fmt: skip

    def succeeded(self, attempt: int) -> None:
        """Record success; one line only when earlier attempts failed."""
        _span_event("succeeded", attempt, None, None, None)
        with self._lock:
            retried = self._first_logged
            self._reset()
        if retried:
            _log.info("succeeded after retries", operation=self.operation, attempt=attempt, **self.fields)

    def gave_up(self, attempt: int, error: BaseException | None) -> None:
        """Record the final failure: one error line with the attempt count."""
        error_type, message = _short(error)
        _span_event("gave_up", attempt, error_type, message, None)
        with self._lock:
            self._reset()
        _log.error(
            "giving up", operation=self.operation, attempt=attempt, error_type=error_type, error=message, **self.fields
        )

    # tenacity hooks ---------------------------------------------------------

    def before_sleep(self, retry_state: Any) -> None:
        """A tenacity ``before_sleep`` hook."""
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        self.retrying(retry_state.attempt_number, error, wait)

    def give_up(self, retry_state: Any) -> Any:
        """Log the give-up and re-raise the last error; a tenacity ``retry_error_callback``."""
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        self.gave_up(retry_state.attempt_number, error)
        if error is not None:
            raise error
        return outcome.result() if outcome is not None else None


def _span_event(outcome: str, attempt: int, error_type: str | None, message: str | None, wait: float | None) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {"retry.outcome": outcome, "retry.attempt": attempt}
    if error_type:
        attributes["error.type"] = error_type
    if message:
        attributes["error.message"] = message
    if wait is not None:
        attributes["retry.wait_s"] = wait
    span.add_event("retry attempt", attributes)
