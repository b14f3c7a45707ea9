"""Entity IDs (``quote_id=44``) under one key in log lines, spans and downstream calls.

:func:`bind` puts the IDs in a context variable. structlog's context picks
them up for log lines, :class:`EntitySpanProcessor` copies them onto every
span started below, and the propagator sends allow-listed keys downstream as
W3C baggage. Context variables follow the work into asyncio tasks, thread-pool
calls and background tasks, and stay apart between concurrent requests.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

__all__ = ["EntitySpanProcessor", "bind", "bound_entities", "unbind"]

# An immutable snapshot per context: bind() always stores a new dict, so a
# task that inherited the old one keeps it unchanged.
_entities: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("dtc_otel_entities", default={})

_ATTRIBUTE_TYPES = (str, bool, int, float)


def _attribute_value(value: Any) -> Any:
    return value if isinstance(value, _ATTRIBUTE_TYPES) else str(value)


# Lists which of a span's attributes are entity IDs, so that readers such as
# the audit processor can tell them from other attributes.
ENTITY_KEYS_ATTRIBUTE = "dtc.entity_keys"


def _set_on_span(span: Any, entities: Mapping[str, Any]) -> None:
    for key, value in entities.items():
        span.set_attribute(key, _attribute_value(value))
    existing = getattr(span, "attributes", None) or {}
    keys = set(existing.get(ENTITY_KEYS_ATTRIBUTE, ())) | set(entities)
    span.set_attribute(ENTITY_KEYS_ATTRIBUTE, sorted(keys))


def bind(**entities: Any) -> None:
    """Bind entity IDs to the current context: log lines, this span and every span below it.

    Use the same key everywhere an entity appears, for example
    ``bind(quote_id=44, customer_id=7)``. Keys listed in
    ``DTC_OTEL_BAGGAGE_KEYS`` also travel to downstream services as baggage.

    Raises:
        ValueError: a key is not an identifier, or a value is None.
    """
    for key, value in entities.items():
        if not key.isidentifier():
            raise ValueError(f"invalid entity key {key!r}: use an identifier such as quote_id")
        if value is None:
            raise ValueError(f"entity {key} is None: pass the ID, or do not bind the key")

    _entities.set({**_entities.get(), **entities})
    structlog.contextvars.bind_contextvars(**entities)

    span = trace.get_current_span()
    if span.is_recording():
        _set_on_span(span, entities)


def unbind(*keys: str) -> None:
    """Remove entity keys from the current context; spans already started keep them."""
    current = dict(_entities.get())
    for key in keys:
        current.pop(key, None)
    _entities.set(current)
    structlog.contextvars.unbind_contextvars(*keys)


def bound_entities() -> Mapping[str, Any]:
    """Return the entity IDs bound in the current context."""
    return _entities.get()


@contextmanager
def bound(**entities: Any) -> Iterator[None]:
    """Bind entity IDs for the duration of a ``with`` block, then restore the previous ones."""
    tokens = bind_for_request(entities)
    try:
        yield
    finally:
        reset_request_entities(tokens)


def bind_for_request(entities: Mapping[str, Any]) -> tuple[Any, Any]:
    """Bind *entities* received from upstream; return tokens for :func:`reset_request_entities`."""
    entity_token = _entities.set({**_entities.get(), **entities})
    log_tokens = structlog.contextvars.bind_contextvars(**entities)
    span = trace.get_current_span()
    if span.is_recording():
        _set_on_span(span, entities)

    return entity_token, log_tokens


def reset_request_entities(tokens: tuple[Any, Any]) -> None:
    """Undo :func:`bind_for_request`."""
    entity_token, log_tokens = tokens
    structlog.contextvars.reset_contextvars(**log_tokens)
    _entities.reset(entity_token)


class EntitySpanProcessor(SpanProcessor):
    """Copy the bound entity IDs onto every span when it starts."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        entities = _entities.get()
        if entities:
            attributes = {key: _attribute_value(value) for key, value in entities.items()}
            attributes[ENTITY_KEYS_ATTRIBUTE] = sorted(entities)
            span.set_attributes(attributes)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
