"""``publish``: announce a state change on a topic, inside the caller's transaction.

The event is an ``audit_events`` row plus a NOTIFY, written with
``dtc_otel.audit.record``, so it commits or rolls back with the caller's own
change: a rolled-back transaction announces nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._record import arecord, record

__all__ = ["apublish", "publish"]

_MAX_TOPIC_LENGTH = 200


def _event(
    topic: str, state: str, entity_ids: Mapping[str, Any] | None, data: Mapping[str, Any] | None, row_id: str | None
) -> AuditEvent:
    if not isinstance(topic, str) or not topic or len(topic) > _MAX_TOPIC_LENGTH or topic == "*":
        raise ValueError(f"invalid topic {topic!r}: expected a name such as 'quote:44', at most {_MAX_TOPIC_LENGTH} characters")
    if not isinstance(state, str) or not state:
        raise ValueError(f"invalid state {state!r}: expected a non-empty string such as 'approved'")
    for key in entity_ids or {}:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"invalid entity key {key!r}: use an identifier such as quote_id")

    span_context = trace.get_current_span().get_span_context()

    return AuditEvent(
        table="audit_events",
        # The ID part of "quote:44"; a topic without one names itself.
        row_id=row_id or topic.partition(":")[2] or topic,
        status=state,
        topic=topic,
        data={"summary": dict(data or {})},
        entity_ids=dict(entity_ids or {}),
        trace_id=format(span_context.trace_id, "032x") if span_context.is_valid else None,
    )


def publish(
    conn: Any,
    topic: str,
    state: str,
    *,
    entity_ids: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    row_id: str | None = None,
) -> str:
    """Write a *state* event on *topic* with the sync psycopg connection *conn*; return its event ID.

    It joins the connection's current transaction and is announced on
    commit. Subscribers of *topic* and of each entity ID's topic
    (``quote_id=44`` gives ``quote:44``) receive it. *data* is stored in the
    row's ``payload`` column under ``summary``; the live event carries IDs and
    the state only.

    Raises:
        ValueError: an empty or too long topic, an empty state or an invalid entity key.
    """
    event = _event(topic, state, entity_ids, data, row_id)
    record(conn, event)

    return event.event_id


async def apublish(
    conn: Any,
    topic: str,
    state: str,
    *,
    entity_ids: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    row_id: str | None = None,
) -> str:
    """Write a *state* event with the async psycopg connection *conn*; see :func:`publish`."""
    event = _event(topic, state, entity_ids, data, row_id)
    await arecord(conn, event)

    return event.event_id
