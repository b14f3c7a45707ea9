"""``record(conn, ...)``: audit rows written in the app's own transaction.

For writes that must commit or roll back together with a business change.
NOTIFY inside a transaction is delivered only on commit, so a rolled-back
change announces nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from psycopg import pq

from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._sql import CLEAR_STAGE, COPY_STAGE, CREATE_STAGE, event_statements, stage_row, staged_statements
from dtc_otel.audit._state import audit_state
from dtc_otel.audit._batch import write_batch

__all__ = ["arecord", "record"]


def _outside_transaction(conn: Any) -> bool:
    # As in write_batch: in autocommit mode each statement would commit on its
    # own and empty the stage before the rows are written from it.
    return bool(conn.autocommit) and conn.info.transaction_status == pq.TransactionStatus.IDLE


@contextmanager
def _record_span(count: int) -> Iterator[trace.Span]:
    # The stage, COPY and set statements are dtc-otel's own: one span shows
    # their time in the request instead of eight statement spans.
    tracer = trace.get_tracer("dtc_otel.audit")
    with tracer.start_as_current_span("dtc_otel.audit.record", attributes={"dtc.audit.events": count}) as span:
        with suppress_instrumentation():
            yield span


def record(conn: Any, *events: AuditEvent) -> int:
    """Write *events* on the psycopg connection *conn*, in its current transaction.

    Returns how many events were new (an event ID seen before is skipped).
    """
    with _record_span(len(events)) as span:
        written = write_batch(conn, audit_state.schema, list(events))
        span.set_attribute("dtc.audit.new_events", written)

    return written


async def arecord(conn: Any, *events: AuditEvent) -> int:
    """Write *events* on the async psycopg connection *conn*, in its current transaction."""
    with _record_span(len(events)) as span:
        if _outside_transaction(conn):
            async with conn.transaction():
                written = await _arecord(conn, list(events))
        else:
            written = await _arecord(conn, list(events))
        span.set_attribute("dtc.audit.new_events", written)

    return written


async def _arecord(conn: Any, batch: list[AuditEvent]) -> int:
    checked = staged_statements(audit_state.schema)
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
            for statement in (checked.job_upsert, checked.new_job_upsert, checked.multi_job_upsert, checked.job_history):
                await cursor.execute(statement)
        row = await (await cursor.execute(checked.announce)).fetchone()
        await cursor.execute(CLEAR_STAGE)

    return int(row[0]) if row else 0
