"""``record(conn, ...)``: audit rows written in the app's own transaction.

For writes that must commit or roll back together with a business change.
NOTIFY inside a transaction is delivered only on commit, so a rolled-back
change announces nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._sql import CLEAR_STAGE, COPY_STAGE, CREATE_STAGE, event_statements, stage_row, staged_statements
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
    single_upsert, multi_upsert, job_history, announce = staged_statements(audit_state.schema)
    jobs = Counter(e.row_id for e in batch if e.table == "job_queue" and not e.data.get("row_written"))
    async with conn.cursor() as cursor:
        await cursor.execute(CREATE_STAGE)
        await cursor.execute(CLEAR_STAGE)
        async with cursor.copy(COPY_STAGE) as copy:
            for seq, event in enumerate(batch):
                await copy.write_row(stage_row(seq, event, jobs.get(event.row_id, 0) <= 1))

        for statement, rows in event_statements(audit_state.schema, [e for e in batch if e.table != "job_queue"]):
            await cursor.executemany(statement, rows)
        if jobs:
            await cursor.execute(single_upsert)
            await cursor.execute(multi_upsert)
            await cursor.execute(job_history)
        row = await (await cursor.execute(announce)).fetchone()
        await cursor.execute(CLEAR_STAGE)

    return int(row[0]) if row else 0
