"""``record(conn, ...)``: audit rows written in the app's own transaction.

For writes that must commit or roll back together with a business change.
NOTIFY inside a transaction is delivered only on commit, so a rolled-back
change announces nothing.
"""

from __future__ import annotations

from typing import Any

from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._sql import (
    audit_event_params,
    audit_event_statement,
    event_statements,
    notify_payload,
    notify_statement,
)
from dtc_otel.audit._state import audit_state
from dtc_otel.audit._writer import write_batch

__all__ = ["arecord", "record"]


def record(conn: Any, *events: AuditEvent) -> int:
    """Write *events* on the psycopg connection *conn*, in its current transaction.

    Returns how many events were new (an event ID seen before is skipped).
    """
    return write_batch(conn, audit_state.schema, list(events))


async def arecord(conn: Any, *events: AuditEvent) -> int:
    """Write *events* on the async psycopg connection *conn*, in its current transaction."""
    batch = list(events)
    schema = audit_state.schema
    async with conn.cursor() as cursor:
        for statement, rows in event_statements(schema, batch):
            await cursor.executemany(statement, rows)

        await cursor.executemany(audit_event_statement(schema), [audit_event_params(e) for e in batch], returning=True)
        inserted: dict[str, int] = {}
        while True:
            row = await cursor.fetchone()
            if row is not None:
                inserted[str(row[1])] = row[0]
            if not cursor.nextset():
                break

        payloads = [(notify_payload(inserted[e.event_id], e),) for e in batch if e.event_id in inserted]
        if payloads:
            await cursor.executemany(notify_statement(), payloads)

    return len(payloads)
