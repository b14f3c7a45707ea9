"""Mask secrets in finished spans before they are exported.

Runs on the batch processor's worker thread, not in the request. That thread
holds the GIL while it works, so the cost still shows in request latency and
is kept low with a cache. A span that needs no change is passed on as it is.
A span that does is copied with masked attributes, event attributes
(exception messages and stack traces included), link attributes and status
description.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, Status

from dtc_otel._otlp_encoder import EncodedSpan, plain_items, span_attributes, span_sequence
from dtc_otel._redaction import MASK, Redactor, default_redactor, on_default_change

__all__ = ["SpanMasker", "mask_attribute", "redact_spans"]


# Results for short string attributes by (key, value): methods, paths, hosts
# and user agents repeat on nearly every span. Emptied when full.
_seen: dict[tuple[str, str], str] = {}
_SEEN_LIMIT = 8192
_SEEN_MAX_VALUE = 256
on_default_change(_seen.clear)


def _needs_change(redactor: Redactor, attributes: Any) -> bool:
    # In the common case every value was seen before and needs no mask, so the
    # cache decides without building a new dict.
    for key, value in plain_items(attributes).items():
        if type(value) is str and len(value) <= _SEEN_MAX_VALUE:
            masked = _seen.get((key, value))
            if masked is None or masked != value:
                return True
        elif type(value) in (int, float, bool):
            if redactor.is_sensitive_key(key):
                return True
        else:
            return True

    return False


def _attributes(redactor: Redactor, attributes: Any) -> tuple[Any, bool]:
    if not attributes:
        return {}, False
    if not _needs_change(redactor, attributes):
        return attributes, False
    changed = False
    result = {}
    for key, value in plain_items(attributes).items():
        if type(value) is str and len(value) <= _SEEN_MAX_VALUE:
            masked = _seen.get((key, value))
            if masked is None:
                masked = redactor.redact(value, key)
                if len(_seen) >= _SEEN_LIMIT:
                    _seen.clear()
                _seen[(key, value)] = masked
        else:
            masked = mask_attribute(redactor, key, value)
        if masked is not value and masked != value:
            changed = True
        result[key] = masked

    return result, changed


def mask_attribute(redactor: Redactor, key: str, value: Any) -> Any:
    """Return the exported form of attribute *key*: *value*, or a mask where it is a secret."""
    if type(value) in (int, float, bool):
        return MASK if redactor.is_sensitive_key(key) else value
    if isinstance(value, (list, tuple)) and redactor.is_sensitive_key(key):
        # A sequence stays a sequence of strings, as OTLP typed it: a
        # captured header's values, one mask each.
        return tuple(MASK for _ in value)

    return redactor.redact(value, key)


class SpanMasker:
    """The masking :func:`dtc_otel._otlp_encoder.encode_span` applies while it encodes a span.

    Its results equal :func:`redact_spans`'s for every attribute, event, link
    and status description. Without a *redactor*, each call uses the default
    redactor in force at that moment.
    """

    __slots__ = ("_redactor", "pairs")

    def __init__(self, redactor: Redactor | None = None) -> None:
        self._redactor = redactor
        self.pairs: dict[tuple[int, str, Any], bytes] = {}
        if redactor is None:
            # Cached results belong to the redactor that made them.
            on_default_change(self.pairs.clear)

    def value(self, key: str, value: Any) -> Any:
        return mask_attribute(self._redactor or default_redactor(), key, value)

    def text(self, text: str) -> str:
        return (self._redactor or default_redactor()).redact_text(text)


def _redact_span(redactor: Redactor, span: ReadableSpan) -> ReadableSpan:
    attributes, changed = _attributes(redactor, span_attributes(span))

    events = []
    for event in span_sequence(span, "_events", "events"):
        event_attributes, event_changed = _attributes(redactor, event.attributes)
        changed = changed or event_changed
        events.append(Event(event.name, event_attributes, event.timestamp) if event_changed else event)

    links = []
    for link in span_sequence(span, "_links", "links"):
        link_attributes, link_changed = _attributes(redactor, link.attributes)
        changed = changed or link_changed
        links.append(Link(link.context, link_attributes) if link_changed else link)

    status = span.status
    if status.description:
        description = redactor.redact_text(status.description)
        if description != status.description:
            changed = True
            status = Status(status.status_code, description)

    if not changed:
        return span

    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def redact_spans(spans: Sequence[Any], redactor: Redactor | None = None) -> list[Any]:
    """Return *spans* with secrets masked; unchanged spans are the same objects.

    Spans already encoded by :func:`dtc_otel._otlp_encoder.encode_span` were
    masked before encoding and pass through.
    """
    redactor = redactor or default_redactor()

    return [span if type(span) is EncodedSpan else _redact_span(redactor, span) for span in spans]
