"""One-shot markers and checkpoints: small synchronous writes whose result the caller needs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from opentelemetry import trace

from dtc_otel._entities import bound_entities
from dtc_otel._redaction import redact
from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._state import audit_state
from dtc_otel.audit._batch import write_batch

__all__ = ["amark_once", "aread_checkpoint", "asave_checkpoint", "mark_once", "read_checkpoint", "save_checkpoint"]

_tracer = trace.get_tracer("dtc_otel.audit")


def _trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def marker_key(name: str, entity_ids: dict[str, Any]) -> str:
    """Build the marker's key: its name plus the entity IDs, such as ``portal_welcome_sent:customer_id=7``."""
    parts = [f"{key}={entity_ids[key]}" for key in sorted(entity_ids)]
    return ":".join([name, *parts])


def mark_once(name: str, *, details: dict[str, Any] | None = None, **entity_ids: Any) -> bool:
    """Record marker *name* for *entity_ids*; return True only for the first call ever.

    Safe under concurrency: of two processes marking the same key at once,
    exactly one gets True. The marker, its ``audit_events`` row and the NOTIFY
    commit together.
    """
    entities = {**bound_entities(), **entity_ids}
    key = marker_key(name, entity_ids)
    event = AuditEvent(
        table="audit_markers",
        row_id=key,
        status="marked",
        data={"name": name, "details": details or {}},
        entity_ids=entities,
        trace_id=_trace_id(),
    )
    with _tracer.start_as_current_span(f"marker {name}", attributes={"dtc.audit.type": "marker", "dtc.marker.key": key}) as span:
        with audit_state.connection() as conn:
            with conn.transaction():
                row = conn.execute(
                    f"INSERT INTO {_schema()}.audit_markers (marker_key, name, entity_ids, details, trace_id) "
                    "VALUES (%s, %s, %s::jsonb, %s::jsonb, %s) ON CONFLICT (marker_key) DO NOTHING RETURNING marker_key",
                    (redact(key), name, _json(redact(entities)), _json(redact(details or {})), event.trace_id),
                ).fetchone()
                first = row is not None
                if first:
                    # The row is in; write_batch adds the audit_events row and NOTIFY.
                    write_batch(conn, audit_state.schema, [replace(event, data={**event.data, "row_written": True})])
        span.set_attribute("dtc.marker.first", first)

    return first


async def amark_once(name: str, *, details: dict[str, Any] | None = None, **entity_ids: Any) -> bool:
    """Async form of :func:`mark_once`; the write runs in a worker thread with the caller's context."""
    return await asyncio.to_thread(mark_once, name, details=details, **entity_ids)


def save_checkpoint(name: str, position: Any) -> None:
    """Store *position* (any JSON value) under *name*, replacing the previous one."""
    event = AuditEvent(table="checkpoints", row_id=name, status="saved", data={"position": position}, trace_id=_trace_id())
    with audit_state.connection() as conn:
        with conn.transaction():
            write_batch(conn, audit_state.schema, [event])


def read_checkpoint(name: str, default: Any = None) -> Any:
    """Return the position stored under *name*, or *default*."""
    with audit_state.connection() as conn:
        row = conn.execute(f"SELECT position FROM {_schema()}.checkpoints WHERE name = %s", (name,)).fetchone()

    return default if row is None else row[0]


async def asave_checkpoint(name: str, position: Any) -> None:
    await asyncio.to_thread(save_checkpoint, name, position)


async def aread_checkpoint(name: str, default: Any = None) -> Any:
    return await asyncio.to_thread(read_checkpoint, name, default)


def _schema() -> str:
    from psycopg import sql

    return sql.Identifier(audit_state.schema).as_string()


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
