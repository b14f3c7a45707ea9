"""Inbound request IDs: validate the caller's ID, keep it for logs and outbound calls."""

from __future__ import annotations

import contextvars
import re

__all__ = ["MAX_LENGTH", "check_request_id", "current_request_id", "request_id_var"]

MAX_LENGTH = 128

# UUIDs, nginx's 32 hex digits, AWS trace headers ("Root=1-abc-def;Sampled=1")
# and similar tokens.
_TOKEN = re.compile(r"^[A-Za-z0-9._:;/+=@~-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The validated inbound request ID of the request being handled, if any.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtc_otel_request_id", default=None)


def check_request_id(value: str) -> str | None:
    """Return why *value* is not an acceptable request ID, or ``None`` when it is.

    The reason never quotes the value, because an invalid one may be an
    injection attempt or carry data that must not reach the logs.
    """
    if not value:
        return "empty"
    if len(value) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters ({len(value)})"
    if _CONTROL.search(value):
        return "contains control characters"
    if not _TOKEN.match(value):
        return "contains characters outside A-Z a-z 0-9 . _ : ; / + = @ ~ -"

    return None


def current_request_id() -> str | None:
    """Return the inbound request ID of the current request, if it had a valid one."""
    return request_id_var.get()
