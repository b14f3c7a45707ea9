"""One batch of audit events to PostgreSQL: COPY into a stage, then one set-based statement per table.

Two entry points share the statements. :func:`write_batch` writes inside the
caller's transaction (``record(conn, ...)``, markers, webhooks).
:func:`write_transaction` serves the background writer: it opens and commits
the transaction itself, in three round trips. After each round trip the
writer thread needs the GIL again before its connection can go on, and
while another writer thread builds its batch that wait can take up to the
interpreter's switch interval. So fewer round trips leave PostgreSQL less
time idle.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import psycopg
from psycopg import errors, pq, sql

from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._sql import (
    CLEAR_STAGE,
    COPY_STAGE,
    CREATE_STAGE,
    allocate_ids,
    direct_statements,
    event_statements,
    stage_row,
    staged_statements,
)

__all__ = ["write_batch", "write_transaction"]

_logger = logging.getLogger("dtc_otel.audit")

_BEGIN = sql.SQL("BEGIN")
_COMMIT = sql.SQL("COMMIT")


def write_batch(conn: psycopg.Connection[Any], schema: str, events: list[AuditEvent]) -> int:
    """Write *events* and announce the new ones, inside the caller's transaction.

    The events are copied into a temporary stage table with COPY, then each
    table is written by one set-based statement, which is several times
    faster than a statement per event. Returns the number of ``audit_events``
    rows inserted: events already written (same event ID) are neither
    inserted nor announced again.

    The history and ``audit_events`` rows are first inserted without
    conflict checks, under a savepoint (see ``direct_statements``). When an
    event of the batch is stored already, the savepoint is rolled back and
    the batch is written again with the checks. On an autocommit connection
    outside a transaction, the batch gets a transaction of its own.
    """
    if not events:
        return 0
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        # Each statement would commit on its own, and the stage (ON COMMIT
        # DELETE ROWS) would be empty again before the rows are written from it.
        with conn.transaction():
            return _write(conn, schema, events, own_transaction=False)

    return _write(conn, schema, events, own_transaction=False)


def write_transaction(conn: psycopg.Connection[Any], schema: str, events: list[AuditEvent]) -> int:
    """Write *events* as :func:`write_batch` does, in a transaction of their own that this call commits.

    *conn* must be an autocommit connection outside a transaction: the
    ``BEGIN`` goes out with the ID allocation and the ``COMMIT`` with the
    last statements. On any error the transaction is rolled back before the
    error is raised, so the connection can take the next batch.
    """
    if not events:
        return 0
    if not conn.autocommit or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError(
            f"write_transaction() needs an autocommit connection outside a transaction, got autocommit="
            f"{conn.autocommit} with transaction status {conn.info.transaction_status.name}; "
            "use write_batch() inside a transaction of your own"
        )
    try:
        return _write(conn, schema, events, own_transaction=True)
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.info.transaction_status == pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        # A broken connection: the caller drops it, and the server ends the transaction.
        pass


def _write(conn: psycopg.Connection[Any], schema: str, events: list[AuditEvent], *, own_transaction: bool) -> int:
    checked = staged_statements(schema)
    jobs = Counter(e.row_id for e in events if e.table == "job_queue" and not e.data.get("row_written"))
    with conn.cursor() as cursor:
        # NOTE: IDs are taken when the batch starts, so another lane can commit a higher ID
        # earlier. The live catch-up's reread_span (1,000 IDs) is what covers that gap.
        if own_transaction:
            # A new transaction's stage is empty: ON COMMIT DELETE ROWS emptied it at the last commit or rollback.
            cursor.execute(sql.SQL("; ").join([_BEGIN, allocate_ids(schema, len(events)), CREATE_STAGE]))
            cursor.nextset()
        else:
            cursor.execute(sql.SQL("; ").join([allocate_ids(schema, len(events)), CREATE_STAGE, CLEAR_STAGE]))
        audit_ids = sorted(row[0] for row in cursor.fetchall())
        with cursor.copy(COPY_STAGE) as copy:
            for seq, (event, audit_id) in enumerate(zip(events, audit_ids)):
                copy.write_row(stage_row(seq, event, jobs.get(event.row_id, 0) <= 1, audit_id))

        # Rarer tables (webhooks, markers, checkpoints) keep a statement per event.
        for statement, rows in event_statements(schema, [e for e in events if e.table != "job_queue"]):
            cursor.executemany(statement, rows)

        upserts = []
        if any(count == 1 for count in jobs.values()):
            upserts.append(checked.job_upsert)
        if any(count > 1 for count in jobs.values()):
            upserts.append(checked.multi_job_upsert)
        write, undo = direct_statements(schema)
        ending = [_COMMIT] if own_transaction else []
        try:
            cursor.execute(sql.SQL("; ").join([*upserts, write, *ending]))
            return len(events)
        except errors.UniqueViolation as exc:
            # A replay: a batch written before the connection dropped, the
            # spool, or record() called twice with one event. The upserts
            # before the savepoint stay; the inserts are made again with
            # conflict checks, which skip the stored events and update stored jobs.
            _logger.debug(
                "audit batch contains stored events, so it is written with conflict checks: %s",
                exc.diag.message_detail,
            )

        job_rows = [checked.new_job_upsert, checked.job_history] if jobs else []
        cursor.execute(sql.SQL("; ").join([undo, *job_rows, checked.announce, CLEAR_STAGE, *ending]))
        # The announce statement's count is the one result with rows.
        while cursor.description is None:
            if not cursor.nextset():
                return 0
        row = cursor.fetchone()

    return int(row[0]) if row else 0
