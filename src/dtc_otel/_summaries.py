"""Payload summaries: large values in log lines become a short description."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_KEEP", "summarize", "summarize_if_large"]

# Fields that identify a payload and are kept in its summary.
DEFAULT_KEEP = ("id", "type", "status", "kind", "event", "name")
_PREVIEW_CHARS = 80


def _size(value: Any) -> int:
    try:
        return len(json.dumps(value, default=str, separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError):
        return len(repr(value))


def summarize(value: Any, keep: Iterable[str] = DEFAULT_KEEP) -> Any:
    """Describe *value* instead of including it: type, size, key or item count, and the *keep* fields.

    A dict keeps the values of the *keep* keys that are short scalars; a
    string keeps its first 80 characters.
    """
    if isinstance(value, str):
        return f"{value[:_PREVIEW_CHARS]}... ({len(value)} characters)"
    if isinstance(value, Mapping):
        summary: dict[str, Any] = {"summary": "dict", "keys": len(value), "bytes": _size(value)}
        for key in keep:
            kept = value.get(key)
            if isinstance(kept, (str, int, float, bool)) and len(str(kept)) <= 64:
                summary[key] = kept
        return summary
    if isinstance(value, (list, tuple, set, frozenset)):
        return {"summary": type(value).__name__, "items": len(value), "bytes": _size(list(value))}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"summary": "bytes", "bytes": len(value)}

    return value


def summarize_if_large(value: Any, max_bytes: int) -> Any:
    """Return :func:`summarize` of *value* when it is over *max_bytes*, else *value* itself."""
    if isinstance(value, str):
        return summarize(value) if len(value) > max_bytes else value
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        return summarize(value) if _size(value) > max_bytes else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return summarize(value)

    return value
