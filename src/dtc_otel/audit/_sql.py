"""The SQL that writes audit events, shared by the background writer and ``record(conn, ...)``.

Every statement is idempotent on the event ID or the row's own key, and a row
is only moved forward in time, so replaying events after a crash or from the
spool never duplicates or rolls back anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from psycopg import sql

from dtc_otel.audit._events import NOTIFY_CHANNEL, AuditEvent

__all__ = ["MAX_NOTIFY_BYTES", "Statement", "event_statements", "notify_payload"]

# PostgreSQL rejects NOTIFY payloads of 8000 bytes or more; stay clear of it.
MAX_NOTIFY_BYTES = 7900

Statement = tuple[sql.Composable, list[Sequence[Any]]]


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def _json(value: Any) -> str:
    return json.dumps(value or {}, default=str, separators=(",", ":"))


_JOB_UPSERT = """
INSERT INTO {s}.job_queue AS j (job_id, kind, status, attempts, max_attempts, last_error, payload,
    entity_ids, trace_id, created_at, updated_at, started_at, finished_at)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s)
ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status,
    attempts = GREATEST(j.attempts, EXCLUDED.attempts),
    max_attempts = EXCLUDED.max_attempts,
    last_error = COALESCE(EXCLUDED.last_error, j.last_error),
    payload = CASE WHEN EXCLUDED.payload = '{{}}'::jsonb THEN j.payload ELSE EXCLUDED.payload END,
    entity_ids = j.entity_ids || EXCLUDED.entity_ids,
    trace_id = COALESCE(j.trace_id, EXCLUDED.trace_id),
    updated_at = EXCLUDED.updated_at,
    started_at = COALESCE(EXCLUDED.started_at, j.started_at),
    finished_at = EXCLUDED.finished_at
WHERE j.updated_at <= EXCLUDED.updated_at
"""

_JOB_EVENT = """
INSERT INTO {s}.job_events (event_id, job_id, kind, transition, attempt, error, trace_id, occurred_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (event_id) DO NOTHING
"""

_WEBHOOK_UPSERT = """
INSERT INTO {s}.webhook_logs AS w (delivery_id, provider, event_type, provider_event_id, raw_body, headers,
    signature_valid, signature_reason, duplicate_of, status_code, processing_error, entity_ids, trace_id,
    received_at, processed_at)
VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)
ON CONFLICT (delivery_id) DO UPDATE SET
    event_type = COALESCE(EXCLUDED.event_type, w.event_type),
    status_code = COALESCE(EXCLUDED.status_code, w.status_code),
    processing_error = COALESCE(EXCLUDED.processing_error, w.processing_error),
    entity_ids = w.entity_ids || EXCLUDED.entity_ids,
    processed_at = COALESCE(EXCLUDED.processed_at, w.processed_at)
"""

_MARKER_INSERT = """
INSERT INTO {s}.audit_markers (marker_key, name, entity_ids, details, trace_id, created_at)
VALUES (%s, %s, %s::jsonb, %s::jsonb, %s, %s)
ON CONFLICT (marker_key) DO NOTHING
"""

_CHECKPOINT_UPSERT = """
INSERT INTO {s}.checkpoints AS c (name, position, trace_id, updated_at)
VALUES (%s, %s::jsonb, %s, %s)
ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, trace_id = EXCLUDED.trace_id,
    updated_at = EXCLUDED.updated_at
WHERE c.updated_at <= EXCLUDED.updated_at
"""

AUDIT_EVENT_INSERT = """
INSERT INTO {s}.audit_events (event_id, topic, source_table, row_id, status, payload, entity_ids, trace_id, created_at)
VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s)
ON CONFLICT (event_id) DO NOTHING
RETURNING id, event_id
"""


def _row_params(event: AuditEvent) -> tuple[str, Sequence[Any]]:
    d = event.data
    at = _ts(event.occurred_at)
    if event.table == "job_queue":
        return _JOB_UPSERT, (
            event.row_id, d["kind"], event.status, d.get("attempts", 0), d.get("max_attempts", 1),
            d.get("last_error"), _json(d.get("payload")), _json(event.entity_ids), event.trace_id,
            at, at, _ts(d.get("started_at")), _ts(d.get("finished_at")),
        )  # fmt: skip
    if event.table == "webhook_logs":
        return _WEBHOOK_UPSERT, (
            event.row_id, d["provider"], d.get("event_type"), d.get("provider_event_id"), d.get("raw_body", b""),
            _json(d.get("headers")), d.get("signature_valid"), d.get("signature_reason"), d.get("duplicate_of"),
            d.get("status_code"), d.get("processing_error"), _json(event.entity_ids), event.trace_id,
            _ts(d.get("received_at")) or at, _ts(d.get("processed_at")),
        )  # fmt: skip
    if event.table == "audit_markers":
        return _MARKER_INSERT, (
            event.row_id, d["name"], _json(event.entity_ids), _json(d.get("details")), event.trace_id, at,
        )  # fmt: skip
    if event.table == "checkpoints":
        return _CHECKPOINT_UPSERT, (event.row_id, json.dumps(d["position"], default=str), event.trace_id, at)

    raise ValueError(f"no row statement for audit table {event.table!r}")


def event_statements(schema: str, events: Iterable[AuditEvent]) -> list[Statement]:
    """Group the row writes of *events* into one executemany-ready statement per kind."""
    schema_id = sql.Identifier(schema)
    grouped: dict[str, list[Sequence[Any]]] = {}
    for event in events:
        if event.table == "audit_events" or event.data.get("row_written"):
            continue
        template, params = _row_params(event)
        grouped.setdefault(template, []).append(params)
        if event.table == "job_queue" and event.data.get("transition"):
            grouped.setdefault(_JOB_EVENT, []).append(
                (
                    event.event_id, event.row_id, event.data["kind"], event.data["transition"],
                    event.data.get("attempts"), event.data.get("last_error"), event.trace_id, _ts(event.occurred_at),
                )  # fmt: skip
            )

    return [(sql.SQL(template).format(s=schema_id), rows) for template, rows in grouped.items()]


def audit_event_statement(schema: str) -> sql.Composable:
    return sql.SQL(AUDIT_EVENT_INSERT).format(s=sql.Identifier(schema))


def audit_event_params(event: AuditEvent) -> Sequence[Any]:
    summary = event.data.get("summary") or {}
    return (
        event.event_id, event.topic, event.table, event.row_id, event.status, _json(summary),
        _json(event.entity_ids), event.trace_id, _ts(event.occurred_at),
    )  # fmt: skip


def notify_payload(audit_id: int, event: AuditEvent) -> str:
    """Build the NOTIFY payload: IDs and status only, always under PostgreSQL's size limit."""
    payload = {
        "id": audit_id,
        "event_id": event.event_id,
        "topic": event.topic,
        "table": event.table,
        "row_id": event.row_id,
        "status": event.status,
        "entity_ids": event.entity_ids,
    }
    text = json.dumps(payload, default=str, separators=(",", ":"))
    if len(text.encode("utf-8")) <= MAX_NOTIFY_BYTES:
        return text

    # Too big (long IDs or many entities): subscribers read the row by its ID.
    slim = {"id": audit_id, "event_id": event.event_id, "truncated": True}
    return json.dumps(slim, separators=(",", ":"))


def notify_statement() -> sql.Composable:
    return sql.SQL("SELECT pg_notify({}, %s)").format(sql.Literal(NOTIFY_CHANNEL))
