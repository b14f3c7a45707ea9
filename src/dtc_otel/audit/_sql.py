"""The SQL that writes audit events, shared by the background writer and ``record(conn, ...)``.

Every write is idempotent on the event ID or the row's own key, and a row is
only moved forward in time, so replaying events after a crash or from the
spool never duplicates or rolls back anything. The direct inserts below get
there by failing on a stored event ID, after which the batch is written again
with the staged statements, which skip it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

from psycopg import sql

from dtc_otel._json import dumps
from dtc_otel._redaction import default_redactor
from dtc_otel.audit._events import NOTIFY_CHANNEL, AuditEvent

__all__ = [
    "MAX_NOTIFY_BYTES",
    "StagedStatements",
    "Statement",
    "allocate_ids",
    "direct_statements",
    "event_statements",
    "notify_payload",
    "stage_row",
    "staged_statements",
]

# PostgreSQL rejects NOTIFY payloads of 8000 bytes or more; stay clear of it.
MAX_NOTIFY_BYTES = 7900

Statement = tuple[sql.Composable, list[Sequence[Any]]]


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def _json(value: Any) -> str:
    return dumps(value) if value else "{}"


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

def _row_params(event: AuditEvent) -> tuple[str, Sequence[Any]]:
    d = event.data
    at = _ts(event.occurred_at)
    if event.table == "webhook_logs":
        return _WEBHOOK_UPSERT, (
            event.row_id, d["provider"], d.get("event_type"), d.get("provider_event_id"), d.get("raw_body", b""),
            _json(_clean(d.get("headers"))), d.get("signature_valid"), d.get("signature_reason"), d.get("duplicate_of"),
            d.get("status_code"), _clean(d.get("processing_error")), _json(_clean(event.entity_ids)), event.trace_id,
            _ts(d.get("received_at")) or at, _ts(d.get("processed_at")),
        )  # fmt: skip
    if event.table == "audit_markers":
        return _MARKER_INSERT, (
            _clean(event.row_id), d["name"], _json(_clean(event.entity_ids)), _json(_clean(d.get("details"))),
            event.trace_id, at,
        )  # fmt: skip
    if event.table == "checkpoints":
        return _CHECKPOINT_UPSERT, (event.row_id, json.dumps(_clean(d["position"]), default=str), event.trace_id, at)

    raise ValueError(f"no row statement for audit table {event.table!r}")


def event_statements(schema: str, events: Iterable[AuditEvent]) -> list[Statement]:
    """Group the row writes of webhook, marker and checkpoint events into one statement per kind.

    Job events go through the staged, set-based statements below instead.
    """
    schema_id = sql.Identifier(schema)
    grouped: dict[str, list[Sequence[Any]]] = {}
    for event in events:
        if event.table in ("audit_events", "job_queue") or event.data.get("row_written"):
            continue
        template, params = _row_params(event)
        grouped.setdefault(template, []).append(params)

    return [(sql.SQL(template).format(s=schema_id), rows) for template, rows in grouped.items()]


def notify_payload(audit_id: int, event: AuditEvent) -> str:
    """Build the NOTIFY payload of *event*: IDs and status only, always under PostgreSQL's size limit.

    The values are masked as the ``audit_events`` row's are. The checked
    statements build the same payload in SQL.
    """
    redact = default_redactor().redact
    return _payload(
        audit_id, event.event_id, redact(event.topic), event.table, redact(event.row_id),
        None if event.status is None else redact(event.status), redact(event.entity_ids),
    )  # fmt: skip


def _payload(
    audit_id: int, event_id: str, topic: str, table: str, row_id: str, status: str | None, entity_ids: dict[str, Any]
) -> str:
    text = dumps(
        {"id": audit_id, "event_id": event_id, "topic": topic, "table": table, "row_id": row_id, "status": status,
         "entity_ids": entity_ids}
    )  # fmt: skip
    # A character takes at most four bytes in UTF-8, so most payloads skip the encoding.
    if len(text) * 4 <= MAX_NOTIFY_BYTES or len(text.encode("utf-8")) <= MAX_NOTIFY_BYTES:
        return text

    # Too big (long IDs or many entities): subscribers read the row by its ID.
    return dumps({"id": audit_id, "event_id": event_id, "truncated": True})


# -- the set-based path: COPY into a temporary stage, then one statement per table --

# The columns COPY fills. Times arrive as seconds since the epoch: turning
# them into datetime objects and text in Python, then parsing that text in
# PostgreSQL, cost about a microsecond per value (measured against a local PostgreSQL 15).
STAGE_COLUMNS = (
    "seq", "event_id", "tbl", "row_id", "status", "topic", "entity_ids", "trace_id", "occurred_epoch",
    "kind", "attempts", "max_attempts", "last_error", "payload", "transition", "started_epoch", "finished_epoch",
    "summary", "row_written", "single", "fresh", "audit_id", "notice",
)  # fmt: skip

# ON COMMIT DELETE ROWS keeps the stage empty between transactions; write
# calls inside one transaction empty it themselves. The *_at columns are the
# times as timestamps, computed on insert, for the statements below. The name
# changed with the time columns: a session a pooler keeps open may still hold
# the old table.
CREATE_STAGE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS dtc_audit_stage_v2 ("
    "seq integer, event_id uuid, tbl text, row_id text, status text, topic text, entity_ids jsonb, "
    "trace_id text, occurred_epoch double precision, kind text, attempts integer, max_attempts integer, "
    "last_error text, payload jsonb, transition text, started_epoch double precision, "
    "finished_epoch double precision, summary jsonb, row_written boolean, single boolean, fresh boolean, "
    "audit_id bigint, notice text, "
    "occurred_at timestamptz GENERATED ALWAYS AS (to_timestamp(occurred_epoch)) STORED, "
    "started_at timestamptz GENERATED ALWAYS AS (to_timestamp(started_epoch)) STORED, "
    "finished_at timestamptz GENERATED ALWAYS AS (to_timestamp(finished_epoch)) STORED) ON COMMIT DELETE ROWS"
)
CLEAR_STAGE = sql.SQL("DELETE FROM pg_temp.dtc_audit_stage_v2")
COPY_STAGE = sql.SQL("COPY pg_temp.dtc_audit_stage_v2 ({}) FROM STDIN").format(
    sql.SQL(", ").join(map(sql.Identifier, STAGE_COLUMNS))
)


def _clean(value: Any, key: str | None = None) -> Any:
    # Every audit column except a webhook's raw body is masked for secrets
    # before it is written; this runs on the writer thread.
    return default_redactor().redact(value, key) if value is not None else None


def stage_row(seq: int, event: AuditEvent, single: bool = True, audit_id: int | None = None) -> tuple[Any, ...]:
    """Return the stage columns of *event*.

    *single* is true when no other event of the batch has its row. *audit_id*
    is the ``audit_events`` ID allocated for the event by the direct path, or
    None for the path that lets the insert allocate it. With an ID, the row
    also carries the event's NOTIFY payload.
    """
    # The writer calls this for every event while its COPY waits, so the
    # redactor is looked up once and empty values skip it.
    redact = default_redactor().redact
    d = event.data
    status = None if event.status is None else redact(event.status)
    row_id = redact(event.row_id)
    topic = redact(event.topic)
    entities = redact(event.entity_ids) if event.entity_ids else {}
    summary = d.get("summary")
    summary_json = _json(redact(summary)) if summary else "{}"
    # Built here rather than in SQL: the writer's Python thread has time to
    # spare while PostgreSQL, the bottleneck, writes the other lane's batch.
    notice = None if audit_id is None else _payload(audit_id, event.event_id, topic, event.table, row_id, status, entities)
    head = (
        seq, event.event_id, event.table, row_id, status, topic, _json(entities), event.trace_id, event.occurred_at,
    )  # fmt: skip
    row_written = bool(d.get("row_written"))
    if event.table != "job_queue":
        return (
            *head, None, None, None, None, None, None, None, None, summary_json, row_written, single, False, audit_id,
            notice,
        )  # fmt: skip

    last_error = d.get("last_error")
    payload = d.get("payload")
    transition = d.get("transition")
    # A job's first event, alone in its batch, makes a new row: see _NEW_JOB_INSERT.
    fresh = single and not row_written and transition == "enqueued"
    return (
        *head, d.get("kind"), d.get("attempts"), d.get("max_attempts"),
        None if last_error is None else redact(last_error), _json(redact(payload)) if payload else "{}",
        transition, d.get("started_at"), d.get("finished_at"), summary_json, row_written, single, fresh, audit_id,
        notice,
    )  # fmt: skip


# The conflict rule of job rows: later state wins, the first trace and a
# non-empty payload stay, entity IDs merge, and an older event never
# overwrites a newer one.
_JOB_CONFLICT = """ON CONFLICT (job_id) DO UPDATE SET
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

# One GROUP BY over the stage, with no joins: temporary tables have no
# statistics, and a join of aggregates over them was planned as nested loops
# that took seconds per thousand events.
_STAGED_JOB_UPSERT = """
WITH per_job AS (
    SELECT row_id,
        (array_agg(kind ORDER BY seq DESC))[1] AS kind,
        (array_agg(status ORDER BY seq DESC))[1] AS status,
        (array_agg(max_attempts ORDER BY seq DESC))[1] AS max_attempts,
        (array_agg(occurred_at ORDER BY seq DESC))[1] AS updated_at,
        (array_agg(finished_at ORDER BY seq DESC))[1] AS finished_at,
        min(occurred_at) AS created_at,
        max(attempts) AS attempts,
        (array_agg(payload ORDER BY seq DESC) FILTER (WHERE payload <> '{{}}'::jsonb))[1] AS payload,
        (array_agg(last_error ORDER BY seq DESC) FILTER (WHERE last_error IS NOT NULL))[1] AS last_error,
        (array_agg(trace_id ORDER BY seq) FILTER (WHERE trace_id IS NOT NULL))[1] AS trace_id,
        (array_agg(started_at ORDER BY seq DESC) FILTER (WHERE started_at IS NOT NULL))[1] AS started_at,
        jsonb_agg(entity_ids ORDER BY seq) AS entity_list
    FROM pg_temp.dtc_audit_stage_v2
    WHERE tbl = 'job_queue' AND NOT row_written AND NOT single
    GROUP BY row_id
)
INSERT INTO {s}.job_queue AS j (job_id, kind, status, attempts, max_attempts, last_error, payload,
    entity_ids, trace_id, created_at, updated_at, started_at, finished_at)
SELECT row_id, kind, status, coalesce(attempts, 0), coalesce(max_attempts, 1), last_error,
    coalesce(payload, '{{}}'::jsonb),
    coalesce((SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_array_elements(entity_list) AS x,
              LATERAL jsonb_each(x) AS e), '{{}}'::jsonb),
    trace_id, created_at, updated_at, started_at, finished_at
FROM per_job
""" + _JOB_CONFLICT

# The common case, one event per job in the batch, needs no aggregation.
_SINGLE_JOB_ROWS = """
INSERT INTO {s}.job_queue AS j (job_id, kind, status, attempts, max_attempts, last_error, payload,
    entity_ids, trace_id, created_at, updated_at, started_at, finished_at)
SELECT row_id, kind, status, coalesce(attempts, 0), coalesce(max_attempts, 1), last_error,
    coalesce(payload, '{{}}'::jsonb), coalesce(entity_ids, '{{}}'::jsonb), trace_id, occurred_at,
    occurred_at, started_at, finished_at
FROM pg_temp.dtc_audit_stage_v2
"""
_STAGED_SINGLE_JOB_UPSERT = _SINGLE_JOB_ROWS + "WHERE tbl = 'job_queue' AND NOT row_written AND single AND NOT fresh\n" + _JOB_CONFLICT
_STAGED_NEW_JOB_UPSERT = _SINGLE_JOB_ROWS + "WHERE fresh\n" + _JOB_CONFLICT

_JOB_EVENTS_INSERT = """
INSERT INTO {s}.job_events (event_id, job_id, kind, transition, attempt, error, trace_id, occurred_at)
SELECT event_id, row_id, kind, transition, attempts, last_error, trace_id, occurred_at
FROM pg_temp.dtc_audit_stage_v2
WHERE tbl = 'job_queue' AND transition IS NOT NULL AND NOT row_written
ORDER BY seq
"""

_STAGED_JOB_EVENTS = _JOB_EVENTS_INSERT + "ON CONFLICT (event_id) DO NOTHING\n"

# Announce {rows}, which has the columns of an audit_events row, in ID order.
# A payload over the limit is replaced by a reference, as notify_payload() does.
_ANNOUNCE = """
SELECT count(pg_notify({channel}, CASE WHEN octet_length(body) <= {limit} THEN body
    ELSE json_build_object('id', id, 'event_id', event_id, 'truncated', true)::text END))
FROM (
    SELECT id, event_id, json_build_object('id', id, 'event_id', event_id, 'topic', topic, 'table', source_table,
        'row_id', row_id, 'status', status, 'entity_ids', entity_ids)::text AS body
    FROM {rows}
    ORDER BY id
) AS bodies
"""

# New audit_events rows and their NOTIFY in one statement: an event ID that
# is already stored is neither inserted nor announced again.
_STAGED_AUDIT_EVENTS = """
WITH inserted AS (
    INSERT INTO {s}.audit_events (event_id, topic, source_table, row_id, status, payload, entity_ids, trace_id, created_at)
    SELECT event_id, topic, tbl, row_id, status, coalesce(summary, '{{}}'::jsonb), coalesce(entity_ids, '{{}}'::jsonb),
        trace_id, occurred_at
    FROM pg_temp.dtc_audit_stage_v2 ORDER BY seq
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id, event_id, topic, source_table, row_id, status, entity_ids
)""" + _ANNOUNCE.replace("{rows}", "inserted")


class StagedStatements(NamedTuple):
    """The statements that write a staged batch with conflict checks, so stored events are skipped."""

    job_upsert: sql.Composable
    """Jobs with one event in the batch, except new ones."""
    multi_job_upsert: sql.Composable
    """Jobs with several events in the batch."""
    new_job_upsert: sql.Composable
    """New jobs: the direct path inserts them without the check."""
    job_history: sql.Composable
    announce: sql.Composable
    """The ``audit_events`` insert with the NOTIFY of each new row; its one row is the count of new rows."""


# Cached: building the statements took about 50 us per batch, which record() pays in the request.
@functools.lru_cache(maxsize=16)
def staged_statements(schema: str) -> StagedStatements:
    """Return the checked statements of *schema*'s tables."""
    schema_id = sql.Identifier(schema)
    return StagedStatements(
        sql.SQL(_STAGED_SINGLE_JOB_UPSERT).format(s=schema_id),
        sql.SQL(_STAGED_JOB_UPSERT).format(s=schema_id),
        sql.SQL(_STAGED_NEW_JOB_UPSERT).format(s=schema_id),
        sql.SQL(_STAGED_JOB_EVENTS).format(s=schema_id),
        sql.SQL(_STAGED_AUDIT_EVENTS).format(
            s=schema_id, channel=sql.Literal(NOTIFY_CHANNEL), limit=sql.Literal(MAX_NOTIFY_BYTES)
        ),
    )


# -- the direct path: audit_events IDs allocated first, inserts without conflict checks --
#
# When no event of a batch is stored yet, which is the common case, the
# inserts need neither ON CONFLICT nor RETURNING, and the NOTIFY payloads
# come with the stage rows. A stored event ID makes an insert fail with a unique
# violation instead. The caller then rolls back to DIRECT_SAVEPOINT and writes
# the batch with staged_statements(), which skip the stored events.

DIRECT_SAVEPOINT = "dtc_audit_direct"

# IDs come from the table's own sequence, so they interleave with rows that
# other connections insert with the column default. The sequence's name, the
# one bigserial gives it in migrations/0001_audit_tables.sql, is written out:
# looking it up with pg_get_serial_sequence() added about 65 us to every batch
# (measured against a local PostgreSQL 15).
_ALLOCATE_IDS = "SELECT nextval({sequence}::regclass) FROM generate_series(1, {count})"

# A new job's row, inserted without ON CONFLICT: the conflict check cost a
# quarter of the insert (1.4 of 6 us per row against a local PostgreSQL 15).
# A job that exists already (a replay, or a job ID enqueued twice) fails
# with a unique violation and goes the checked way.
_NEW_JOB_INSERT = _SINGLE_JOB_ROWS + "WHERE fresh\n"

_DIRECT_AUDIT_EVENTS = """
INSERT INTO {s}.audit_events (id, event_id, topic, source_table, row_id, status, payload, entity_ids, trace_id,
    created_at)
SELECT audit_id, event_id, topic, tbl, row_id, status, coalesce(summary, '{{}}'::jsonb),
    coalesce(entity_ids, '{{}}'::jsonb), trace_id, occurred_at
FROM pg_temp.dtc_audit_stage_v2
"""

# The NOTIFY of every staged event, in ID order, with the payloads stage_row() built.
_STAGED_NOTICES = """
SELECT count(pg_notify({channel}, notice))
FROM (SELECT notice FROM pg_temp.dtc_audit_stage_v2 ORDER BY audit_id) AS notices
"""


def allocate_ids(schema: str, count: int) -> sql.Composable:
    """Return the query that takes *count* IDs from the sequence of ``audit_events``."""
    sequence = sql.Identifier(schema, "audit_events_id_seq").as_string(None)
    return sql.SQL(_ALLOCATE_IDS).format(sequence=sql.Literal(sequence), count=sql.Literal(count))


@functools.lru_cache(maxsize=16)
def direct_statements(schema: str) -> tuple[sql.Composable, sql.Composable]:
    """Return the direct write of a staged batch and the statement that undoes it after a unique violation.

    The write is several statements in one query string: a savepoint, the
    new jobs', history and ``audit_events`` inserts, the savepoint's release, the NOTIFY
    of every staged event in ID order, and the emptying of the stage. The
    stage must have an ``audit_id`` and a ``notice`` in every row.
    """
    schema_id = sql.Identifier(schema)
    savepoint = sql.Identifier(DIRECT_SAVEPOINT)
    write = sql.SQL("; ").join(
        [
            sql.SQL("SAVEPOINT {}").format(savepoint),
            sql.SQL(_NEW_JOB_INSERT).format(s=schema_id),
            sql.SQL(_JOB_EVENTS_INSERT).format(s=schema_id),
            sql.SQL(_DIRECT_AUDIT_EVENTS).format(s=schema_id),
            sql.SQL("RELEASE SAVEPOINT {}").format(savepoint),
            sql.SQL(_STAGED_NOTICES).format(channel=sql.Literal(NOTIFY_CHANNEL)),
            CLEAR_STAGE,
        ]
    )
    undo = sql.SQL("ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}").format(savepoint)

    return write, undo
