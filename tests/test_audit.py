"""Audit tables against a real PostgreSQL: schema, jobs, markers, checkpoints, NOTIFY, outages."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dtc_otel
from dtc_otel import audit
from dtc_otel._entities import EntitySpanProcessor
from dtc_otel.audit._batch import write_batch, write_transaction
from dtc_otel.audit._events import NOTIFY_CHANNEL, AuditEvent
from dtc_otel.audit._schema import apply_migrations, load_migrations, render_migrations
from dtc_otel.audit._sql import MAX_NOTIFY_BYTES, notify_payload
from dtc_otel.audit._state import audit_state
from dtc_otel.audit._writer import AuditWriter
from tests.conftest import BIN

DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit.md"
SCHEMA = "dtc_audit"

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    """One global tracer provider for this module, with the audit processor, as dtc-otel sets it up."""
    provider = TracerProvider()
    provider.add_span_processor(EntitySpanProcessor())
    provider.add_span_processor(audit.AuditSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace._TRACER_PROVIDER = None  # noqa: SLF001 - tests own the global provider
    trace._TRACER_PROVIDER_SET_ONCE._done = False  # noqa: SLF001
    trace.set_tracer_provider(provider)


@pytest.fixture
def audit_db(database_url: str, tmp_path: Path):
    """A migrated database with the audit writer pointed at it."""
    apply_migrations(database_url, SCHEMA)
    audit_state.database_url = database_url
    audit_state.schema = SCHEMA
    audit_state._pool = None
    audit_state.writer = AuditWriter(database_url, SCHEMA, tmp_path / "spool")
    _exporter.clear()
    yield database_url
    audit_state.writer.shutdown(2)
    if audit_state._pool is not None:
        audit_state._pool.close()
        audit_state._pool = None
    audit_state.writer = None


def _rows(url: str, query: str, *params) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


class Listener:
    """A LISTEN connection collecting NOTIFY payloads on the audit channel."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def collect(self, expected: int, timeout: float = 10.0) -> list[dict]:
        payloads: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(payloads) < expected and time.monotonic() < deadline:
            for note in self.conn.notifies(timeout=0.2, stop_after=expected - len(payloads)):
                payloads.append(json.loads(note.payload))
        return payloads

    def close(self) -> None:
        self.conn.close()


class TestSchema:
    def test_migrations_match_documented_schema(self, audit_db) -> None:
        """Every table and column documented in docs/audit.md exists, and nothing undocumented."""
        documented: dict[str, set[str]] = {}
        table = None
        for line in DOCS.read_text().splitlines():
            heading = re.match(r"^### `(\w+)`", line)
            if heading:
                table = heading[1]
                documented[table] = set()
                continue
            cell = re.match(r"^\| `(\w+)` \|", line)
            if table and cell:
                documented[table].add(cell[1])
        actual: dict[str, set[str]] = {}
        for name, column in _rows(
            audit_db,
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
            SCHEMA,
        ):
            actual.setdefault(name, set()).add(column)
        actual.pop("schema_migrations")

        assert set(documented) == set(actual)
        for name in actual:
            assert documented[name] == actual[name], f"{name}: documented and actual columns differ"

    def test_migrate_twice_and_concurrently(self, database_url) -> None:
        """Two processes migrating at once: one applies, the other finds nothing to do."""
        results: list[list[str]] = []
        threads = [threading.Thread(target=lambda: results.append(apply_migrations(database_url, "audit_race"))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        assert sorted(len(r) for r in results) == [0, 0, 0, len(load_migrations())]
        assert apply_migrations(database_url, "audit_race") == []

    def test_sql_output_uses_schema(self) -> None:
        """`migrate --sql` prints DDL for the configured schema."""
        text = render_migrations("billing_audit")

        assert 'CREATE TABLE IF NOT EXISTS "billing_audit".job_queue' in text
        assert "{schema}" not in text


class TestJobs:
    def test_retry_then_success_records_every_transition(self, audit_db) -> None:
        """A job that fails once and then succeeds leaves one row, its history and its trace."""
        listener = Listener(audit_db)
        attempts = {"n": 0}

        @audit.job_handler("approve_quote", max_attempts=3, backoff=lambda attempt: 0.01)
        def approve(payload: dict) -> str:
            attempts["n"] += 1
            if attempts["n"] == 1:
                raise ConnectionError("partner timed out")
            return "ok"

        with trace.get_tracer("t").start_as_current_span("request") as request_span:
            dtc_otel.bind(quote_id=44)
            job_id = audit.enqueue("approve_quote", {"quote_id": 44, "secret_note": "raw payload"}, max_attempts=3)
        payload = _payload_of(audit_db, job_id)
        assert approve(payload, job_id=job_id) == "ok"
        assert audit_state.writer.flush(10)

        row = _rows(audit_db, f"SELECT status, attempts, max_attempts, last_error, entity_ids, trace_id, finished_at FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id)[0]
        assert row[0] == "succeeded"
        assert row[1] == 2
        assert row[2] == 3
        assert "partner timed out" in row[3]
        assert row[4] == {"quote_id": 44}
        assert row[5] == format(request_span.get_span_context().trace_id, "032x")
        assert row[6] is not None
        transitions = [r[0] for r in _rows(audit_db, f"SELECT transition FROM {SCHEMA}.job_events WHERE job_id = %s ORDER BY occurred_at, id", job_id)]
        assert transitions == ["enqueued", "started", "failed", "retrying", "started", "succeeded"]
        job_spans = [s for s in _exporter.get_finished_spans() if s.name == "job approve_quote"]
        assert len(job_spans) == 2
        assert all(s.context.trace_id == request_span.get_span_context().trace_id for s in job_spans)
        exported = json.dumps([dict(s.attributes or {}) for s in _exporter.get_finished_spans()])
        assert "raw payload" not in exported
        notes = listener.collect(6)
        listener.close()
        assert [n["status"] for n in notes] == ["pending", "running", "running", "retrying", "running", "succeeded"]
        assert all(n["topic"] == "quote:44" and n["table"] == "job_queue" and n["row_id"] == job_id for n in notes)

    def test_last_attempt_failure_is_dead(self, audit_db) -> None:
        """After max_attempts failures the job is dead and the exception reaches the caller."""

        @audit.job_handler("send_invoice", max_attempts=2, backoff=lambda attempt: 0.01)
        async def send(payload: dict) -> None:
            raise RuntimeError("mail server down")

        import asyncio

        job_id = str(uuid.uuid4())
        with pytest.raises(RuntimeError):
            asyncio.run(send({}, job_id=job_id))
        audit_state.writer.flush(10)

        status, attempts = _rows(audit_db, f"SELECT status, attempts FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id)[0]
        assert status == "dead"
        assert attempts == 2

    def test_not_retryable_failure_is_failed(self, audit_db) -> None:
        """retryable=False records failed, not retrying."""
        job_id = str(uuid.uuid4())
        with pytest.raises(ValueError):
            with audit.job("import_rates", job_id=job_id, max_attempts=5, retryable=False):
                raise ValueError("bad file")
        audit_state.writer.flush(10)

        assert _rows(audit_db, f"SELECT status FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id)[0][0] == "failed"


def _payload_of(url: str, job_id: str) -> dict:
    audit_state.writer.flush(10)
    return _rows(url, f"SELECT payload FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id)[0][0]


class TestTransactionalRecord:
    def test_rollback_writes_and_announces_nothing(self, audit_db) -> None:
        """record() in a rolled-back transaction leaves no rows and sends no NOTIFY."""
        listener = Listener(audit_db)
        with psycopg.connect(audit_db) as conn:
            with pytest.raises(ZeroDivisionError):
                with conn.transaction():
                    audit.enqueue("refund", {"invoice_id": 9}, conn=conn)
                    1 / 0

        assert listener.collect(1, timeout=1.0) == []
        listener.close()
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.job_queue")[0][0] == 0

    def test_commit_announces_each_event(self, audit_db) -> None:
        """Two identical changes in one transaction still arrive as two notifications."""
        listener = Listener(audit_db)
        with psycopg.connect(audit_db) as conn:
            with conn.transaction():
                for _ in range(2):
                    audit.record(conn, AuditEvent(table="checkpoints", row_id="rates", status="saved", data={"position": 7}))

        notes = listener.collect(2)
        listener.close()
        assert len(notes) == 2
        assert notes[0]["id"] != notes[1]["id"]

    def test_replayed_event_written_once(self, audit_db) -> None:
        """Writing the same event twice leaves one audit_events row and one NOTIFY."""
        event = AuditEvent(table="checkpoints", row_id="backfill", status="saved", data={"position": {"page": 3}})
        with psycopg.connect(audit_db) as conn:
            first = audit.record(conn, event)
            second = audit.record(conn, event)

        assert (first, second) == (1, 0)
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.audit_events WHERE event_id = %s", event.event_id)[0][0] == 1


def _job_event(job_id: str, status: str, transition: str, quote_id: int) -> AuditEvent:
    return AuditEvent(
        table="job_queue",
        row_id=job_id,
        status=status,
        data={"kind": "approve_quote", "attempts": 0, "max_attempts": 3, "transition": transition},
        entity_ids={"quote_id": quote_id},
    )


def _write_in_transaction(url: str, events: list[AuditEvent]) -> int:
    """Write *events* as one batch in a transaction of the caller's, as record() does."""
    with psycopg.connect(url) as conn:
        with conn.transaction():
            return write_batch(conn, SCHEMA, events)


def _write_own_transaction(url: str, events: list[AuditEvent]) -> int:
    """Write *events* as the background writer does: one batch, in a transaction write_transaction() commits."""
    with psycopg.connect(url, autocommit=True) as conn:
        written = write_transaction(conn, SCHEMA, events)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        return written


@pytest.fixture(params=[_write_in_transaction, _write_own_transaction], ids=["caller_transaction", "own_transaction"])
def write_events(request):
    return request.param


class TestBatchWrite:
    def test_own_transaction_needs_autocommit(self, audit_db) -> None:
        """write_transaction() on a connection that is already in a transaction refuses and names the alternative."""
        with psycopg.connect(audit_db) as conn:
            conn.execute("SELECT 1")
            with pytest.raises(psycopg.ProgrammingError, match="autocommit connection outside a transaction.*write_batch"):
                write_transaction(conn, SCHEMA, [_job_event(str(uuid.uuid4()), "pending", "enqueued", 1)])

    def test_own_transaction_rolled_back_on_error(self, audit_db) -> None:
        """A batch PostgreSQL rejects leaves no rows and a connection ready for the next batch."""
        bad = AuditEvent(table="job_queue", row_id=str(uuid.uuid4()), status="stalled", data={"kind": "k", "transition": "enqueued"})
        good = _job_event(str(uuid.uuid4()), "pending", "enqueued", 2)
        with psycopg.connect(audit_db, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.CheckViolation):
                write_transaction(conn, SCHEMA, [good, bad])
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert write_transaction(conn, SCHEMA, [good]) == 1

        assert _rows(audit_db, f"SELECT event_id::text FROM {SCHEMA}.audit_events") == [(good.event_id,)]
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.job_queue")[0][0] == 1

    def test_replayed_batch_written_once(self, audit_db, caplog, write_events) -> None:
        """A batch written twice: the second write falls back to conflict checks, adding no rows and no NOTIFY."""
        job_id = str(uuid.uuid4())
        events = [
            _job_event(job_id, "pending", "enqueued", 44),
            _job_event(job_id, "running", "started", 44),
            AuditEvent(table="checkpoints", row_id="rates", status="saved", data={"position": 7}),
        ]
        listener = Listener(audit_db)

        assert write_events(audit_db, events) == 3
        first_notes = listener.collect(3)
        with caplog.at_level(logging.DEBUG, logger="dtc_otel.audit"):
            assert write_events(audit_db, events) == 0
        replay_notes = listener.collect(1, timeout=1.0)
        listener.close()

        assert len(first_notes) == 3
        assert replay_notes == []
        assert any("conflict checks" in record.getMessage() for record in caplog.records), "no fallback was logged"
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.audit_events")[0][0] == 3
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.job_events")[0][0] == 2
        assert _rows(audit_db, f"SELECT status FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id) == [("running",)]

    def test_partly_stored_batch_announces_new(self, audit_db, write_events) -> None:
        """A batch with stored and new events writes and announces each new one once, in ID order."""
        stored = [_job_event(str(uuid.uuid4()), "pending", "enqueued", n) for n in range(3)]
        fresh = [_job_event(str(uuid.uuid4()), "pending", "enqueued", n) for n in range(3, 6)]
        assert write_events(audit_db, stored) == 3
        listener = Listener(audit_db)

        written = write_events(audit_db, [stored[0], fresh[0], stored[1], fresh[1], fresh[2], stored[2]])
        notes = listener.collect(4, timeout=2.0)
        listener.close()

        assert written == 3
        assert [n["event_id"] for n in notes] == [e.event_id for e in fresh]
        assert [n["id"] for n in notes] == sorted(n["id"] for n in notes)
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.audit_events")[0][0] == 6
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.job_events")[0][0] == 6

    def test_job_enqueued_twice_updates_row(self, audit_db, write_events) -> None:
        """A job ID enqueued again in a later batch updates its row and adds history, as the checked upsert does."""
        job_id = str(uuid.uuid4())
        first = _job_event(job_id, "pending", "enqueued", 44)
        again = AuditEvent(
            table="job_queue",
            row_id=job_id,
            status="pending",
            data={"kind": "approve_quote", "attempts": 0, "max_attempts": 5, "transition": "enqueued"},
            entity_ids={"customer_id": 7},
            occurred_at=first.occurred_at + 1,
        )

        assert write_events(audit_db, [first]) == 1
        assert write_events(audit_db, [again]) == 1

        job = _rows(audit_db, f"SELECT max_attempts, entity_ids FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id)
        assert job == [(5, {"quote_id": 44, "customer_id": 7})]
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.job_events WHERE job_id = %s", job_id)[0][0] == 2
        assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.audit_events WHERE row_id = %s", job_id)[0][0] == 2

    def test_notify_follows_id_order(self, audit_db, write_events) -> None:
        """Each NOTIFY of a batch carries its row's ID and fields, in the order of the batch and of the IDs."""
        events = [_job_event(str(uuid.uuid4()), "pending", "enqueued", n) for n in range(20)]
        events.insert(5, AuditEvent(table="checkpoints", row_id="rates", status="saved", data={"position": 1}))
        secret = AuditEvent(table="checkpoints", row_id="keys", status="saved", data={"position": 2}, entity_ids={"quote_id": 3, "api_key": "k-8d7f6e5d4c3b"})
        events.insert(9, secret)
        listener = Listener(audit_db)

        assert write_events(audit_db, events) == len(events)
        notes = listener.collect(len(events))
        listener.close()

        stored = _rows(audit_db, f"SELECT id, event_id::text, topic, source_table, row_id, status, entity_ids FROM {SCHEMA}.audit_events ORDER BY id")
        assert [n["event_id"] for n in notes] == [e.event_id for e in events]
        assert [row[1] for row in stored] == [e.event_id for e in events]
        expected = [
            {
                "id": audit_id,
                "event_id": event_id,
                "topic": topic,
                "table": table,
                "row_id": row_id,
                "status": status,
                "entity_ids": entities,
            }
            for audit_id, event_id, topic, table, row_id, status, entities in stored
        ]
        assert notes == expected
        assert notes[9]["entity_ids"] == {"quote_id": 3, "api_key": "[REDACTED]"}

    def test_ids_shared_with_default_inserts(self, audit_db, write_events) -> None:
        """IDs allocated for a batch come from the table's sequence, so a later default insert follows them."""
        events = [_job_event(str(uuid.uuid4()), "pending", "enqueued", n) for n in range(10)]
        write_events(audit_db, events)
        with psycopg.connect(audit_db) as conn:
            next_id = conn.execute(
                f"INSERT INTO {SCHEMA}.audit_events (event_id, topic, source_table, row_id) "
                "VALUES (gen_random_uuid(), 't', 'audit_events', 'r') RETURNING id"
            ).fetchone()[0]

        batch_ids = [row[0] for row in _rows(audit_db, f"SELECT id FROM {SCHEMA}.audit_events WHERE source_table = 'job_queue'")]
        sequence = _rows(audit_db, "SELECT pg_get_serial_sequence(%s, 'id')", f"{SCHEMA}.audit_events")[0][0]
        assert sequence == f"{SCHEMA}.audit_events_id_seq"
        assert next_id > max(batch_ids)

    def test_times_stored_to_the_microsecond(self, audit_db, write_events) -> None:
        """The event's time and the job's start and finish times land in every table as given, to the microsecond."""
        occurred, started, finished = 1764900000.123456, 1764899990.5, 1764899999.000001
        event = AuditEvent(
            table="job_queue",
            row_id=str(uuid.uuid4()),
            status="succeeded",
            data={"kind": "k", "attempts": 1, "transition": "succeeded", "started_at": started, "finished_at": finished},
            occurred_at=occurred,
        )

        write_events(audit_db, [event])

        def at(epoch: float) -> datetime:
            return datetime.fromtimestamp(epoch, tz=timezone.utc)

        job = _rows(audit_db, f"SELECT created_at, updated_at, started_at, finished_at FROM {SCHEMA}.job_queue")
        assert job == [(at(occurred), at(occurred), at(started), at(finished))]
        assert _rows(audit_db, f"SELECT occurred_at FROM {SCHEMA}.job_events") == [(at(occurred),)]
        assert _rows(audit_db, f"SELECT created_at FROM {SCHEMA}.audit_events") == [(at(occurred),)]

    def test_oversized_notify_sent_by_reference(self, audit_db, write_events) -> None:
        """A batch event whose payload would pass the NOTIFY limit is announced by ID only."""
        entities = {f"customer{n}_id": n for n in range(600)}
        event = AuditEvent(table="checkpoints", row_id="rates", status="saved", data={"position": 1}, entity_ids=entities)
        listener = Listener(audit_db)

        write_events(audit_db, [event])
        notes = listener.collect(1)
        listener.close()

        audit_id = _rows(audit_db, f"SELECT id FROM {SCHEMA}.audit_events WHERE event_id = %s", event.event_id)[0][0]
        assert notes == [{"id": audit_id, "event_id": event.event_id, "truncated": True}]


class TestMarkersAndCheckpoints:
    def test_mark_once_single_winner_under_concurrency(self, audit_db) -> None:
        """Ten threads marking the same key: exactly one gets True."""
        results: list[bool] = []
        barrier = threading.Barrier(10)

        def mark() -> None:
            barrier.wait()
            results.append(audit.mark_once("portal_welcome_sent", customer_id=7))

        threads = [threading.Thread(target=mark) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        assert results.count(True) == 1
        assert results.count(False) == 9
        assert _rows(audit_db, f"SELECT marker_key, entity_ids FROM {SCHEMA}.audit_markers") == [
            ("portal_welcome_sent:customer_id=7", {"customer_id": 7})
        ]

    def test_checkpoint_round_trip(self, audit_db) -> None:
        """A saved position reads back; the default applies to unknown names."""
        audit.save_checkpoint("invoice_backfill", {"last_id": 115400})
        audit.save_checkpoint("invoice_backfill", {"last_id": 115500})

        assert audit.read_checkpoint("invoice_backfill") == {"last_id": 115500}
        assert audit.read_checkpoint("nothing", default=0) == 0


class TestNotifyPayload:
    def test_payload_stays_under_limit(self) -> None:
        """A huge event is announced by reference, under PostgreSQL's NOTIFY limit."""
        event = AuditEvent(table="job_queue", row_id="x" * 9000, status="pending", data={"kind": "k"}, entity_ids={"quote_id": 1})

        payload = notify_payload(12, event)

        assert len(payload.encode()) <= MAX_NOTIFY_BYTES
        assert json.loads(payload) == {"id": 12, "event_id": event.event_id, "truncated": True}


class TestWriterLanes:
    def test_row_order_kept_across_lanes(self, audit_db, tmp_path) -> None:
        """Two lanes with small batches write each job's events in the order they were queued."""
        # Few jobs and tiny batches: a job's next event is usually in the other lane's next batch.
        writer = AuditWriter(audit_db, SCHEMA, tmp_path, batch_size=3, connections=2)
        attempts = [("running", "started"), ("retrying", "retry")] * 15
        steps = [("pending", "enqueued"), *attempts, ("running", "started"), ("succeeded", "succeeded")]
        job_ids: list[str] = []
        # Several rounds, because a race shows only in some of them.
        for _ in range(4):
            round_jobs = [str(uuid.uuid4()) for _ in range(4)]
            for status, transition in steps:
                for job_id in round_jobs:
                    writer.enqueue(_job_event(job_id, status, transition, 1))
            assert writer.flush(30)
            job_ids += round_jobs
        writer.shutdown(2)

        # History IDs are taken as the rows are inserted, so they show the order of the writes.
        rows = _rows(audit_db, f"SELECT job_id, transition FROM {SCHEMA}.job_events ORDER BY id")
        for job_id in job_ids:
            assert [transition for row_id, transition in rows if row_id == job_id] == [transition for _, transition in steps]
        final = _rows(audit_db, f"SELECT DISTINCT status FROM {SCHEMA}.job_queue")
        assert final == [("succeeded",)]

    def test_busy_rows_passed_over_in_order(self, tmp_path) -> None:
        """A lane takes the rows no other lane is writing, and the rows it passes over keep their place."""
        writer = AuditWriter("postgresql://postgres@127.0.0.1:1/none", SCHEMA, tmp_path, batch_size=10, connections=2)
        events = [
            AuditEvent(table="checkpoints", row_id=row_id, status="saved", data={"position": n})
            for n, row_id in enumerate(["busy", "free", "busy", "other", "free"])
        ]
        writer._queue.extend(events)
        writer._lanes[1].rows = {("checkpoints", "busy")}

        batch = writer._take_batch(writer._lanes[0])

        assert batch == [events[1], events[3], events[4]]
        assert list(writer._queue) == [events[0], events[2]]
        assert writer._lanes[0].rows == {("checkpoints", "free"), ("checkpoints", "other")}


class TestOutages:
    def test_unreachable_database_spools_then_replays(self, audit_db, tmp_path) -> None:
        """Events written while PostgreSQL is unreachable are spooled and replayed exactly once."""
        spool = tmp_path / "outage-spool"
        down = AuditWriter("postgresql://postgres@127.0.0.1:1/none", SCHEMA, spool, max_queue=10)
        events = [AuditEvent(table="checkpoints", row_id=f"cp{i}", status="saved", data={"position": i}) for i in range(50)]
        for event in events:
            down.enqueue(event)
        down.shutdown(1.0)
        assert list(spool.glob("spool-*.jsonl")), "nothing was spooled"
        assert down.stats.dropped == 0

        up = AuditWriter(audit_db, SCHEMA, spool)
        up.enqueue(AuditEvent(table="checkpoints", row_id="after", status="saved", data={"position": 0}))
        assert up.flush(15)
        up.shutdown(2)

        ids = [r[0] for r in _rows(audit_db, f"SELECT event_id::text FROM {SCHEMA}.audit_events")]
        assert len(ids) == len(set(ids))
        assert {e.event_id for e in events} <= set(ids)
        assert not list(spool.glob("spool-*.jsonl"))

    def test_terminated_connection_loses_nothing(self, audit_db) -> None:
        """Killing the writer's backend mid-stream: every event arrives exactly once."""
        writer = audit_state.writer
        events = [AuditEvent(table="checkpoints", row_id=f"k{i}", status="saved", data={"position": i}) for i in range(3000)]
        for index, event in enumerate(events):
            writer.enqueue(event)
            if index in (500, 1500, 2500):
                time.sleep(0.05)
                _rows(audit_db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dtc-otel-audit-writer' AND datname = current_database()")
        assert writer.flush(30)

        ids = [r[0] for r in _rows(audit_db, f"SELECT event_id::text FROM {SCHEMA}.audit_events")]
        assert len(ids) == 3000
        assert set(ids) == {e.event_id for e in events}
        assert writer.stats.dropped == 0


def test_writer_health_exported_as_metrics(tmp_path) -> None:
    """Queue depth, spool size and counters reach an OpenTelemetry metric reader."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    writer = AuditWriter("postgresql://postgres@127.0.0.1:1/none", SCHEMA, tmp_path, max_queue=2)
    for index in range(5):
        writer.enqueue(AuditEvent(table="checkpoints", row_id="a", status="saved", data={"position": index}))
    # With the database unreachable, shutdown leaves every event in the spool.
    writer.shutdown(0.5)

    values = {
        metric.name: [point.value for point in metric.data.data_points]
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }

    assert values["dtc_otel.audit.events_spooled"][0] >= 5
    assert values["dtc_otel.audit.spool_size"][0] > 0
    assert "dtc_otel.audit.queue_depth" in values
    assert values["dtc_otel.audit.events_dropped"] == [0]


def test_record_traced_as_one_span(audit_db) -> None:
    """record() in a request shows as one span, and its own SQL statements get no spans of their own."""
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    instrumentor = PsycopgInstrumentor()
    instrumentor.instrument()
    try:
        with psycopg.connect(audit_db) as conn:
            with trace.get_tracer("test").start_as_current_span("request"):
                conn.execute("SELECT 1")
                written = audit.record(conn, AuditEvent(table="checkpoints", row_id="rates", status="saved", data={"position": 1}))
    finally:
        instrumentor.uninstrument()

    spans = _exporter.get_finished_spans()
    request = next(span for span in spans if span.name == "request")
    children = [span for span in spans if span.parent is not None and span.parent.span_id == request.context.span_id]
    names = sorted(span.name for span in children)
    assert written == 1
    assert names == ["SELECT", "dtc_otel.audit.record"], names
    record_span = next(span for span in children if span.name == "dtc_otel.audit.record")
    assert record_span.attributes["dtc.audit.events"] == 1
    assert record_span.attributes["dtc.audit.new_events"] == 1
    assert not [span for span in spans if span.parent is not None and span.parent.span_id == record_span.context.span_id]


def test_record_on_autocommit_connection(audit_db) -> None:
    """record() on an autocommit connection, outside any transaction, still writes and announces its rows."""
    job_id = str(uuid.uuid4())
    listener = Listener(audit_db)
    with psycopg.connect(audit_db, autocommit=True) as conn:
        written = audit.record(conn, AuditEvent(table="job_queue", row_id=job_id, status="pending", data={"kind": "k", "transition": "enqueued"}))

    notes = listener.collect(1)
    listener.close()
    assert written == 1
    assert _rows(audit_db, f"SELECT status FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id) == [("pending",)]
    assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.job_events WHERE job_id = %s", job_id) == [(1,)]
    assert [note["row_id"] for note in notes] == [job_id]


def test_arecord_on_autocommit_connection(audit_db) -> None:
    """arecord() on an autocommit async connection writes its rows too."""
    import asyncio

    job_id = str(uuid.uuid4())

    async def write() -> int:
        async with await psycopg.AsyncConnection.connect(audit_db, autocommit=True) as conn:
            return await audit.arecord(
                conn, AuditEvent(table="job_queue", row_id=job_id, status="pending", data={"kind": "k", "transition": "enqueued"})
            )

    assert asyncio.run(write()) == 1
    assert _rows(audit_db, f"SELECT count(*) FROM {SCHEMA}.job_events WHERE job_id = %s", job_id) == [(1,)]
    assert _rows(audit_db, f"SELECT status FROM {SCHEMA}.job_queue WHERE job_id = %s", job_id) == [("pending",)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:5432/app", "DTC_OTEL_DATABASE_URL is set, but dtc-otel was not started"),
        (None, "DTC_OTEL_DATABASE_URL is not set"),
    ],
    ids=["url_set", "url_missing"],
)
def test_unconfigured_enqueue_names_fix(monkeypatch, url, message) -> None:
    """enqueue() before dtc-otel has started names the missing step: the URL, or starting dtc-otel."""
    if url is None:
        monkeypatch.delenv("DTC_OTEL_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("DTC_OTEL_DATABASE_URL", url)
    monkeypatch.setattr(audit_state, "database_url", None)
    monkeypatch.setattr(audit_state, "writer", None)

    with pytest.raises(RuntimeError, match=message) as error:
        audit.enqueue("approve_quote", {"quote_id": 44})

    assert "dtc-otel-run" in str(error.value)


def test_doctor_lists_idle_writer(database_url, tmp_path) -> None:
    """A writer that has written nothing yet is in dtc-otel doctor, and reports of exited writers are removed."""
    spool = tmp_path / "spool"
    spool.mkdir()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    (spool / f"health-{exited.pid}.json").write_text(json.dumps({"pid": exited.pid, "updated_at": 0}))

    writer = AuditWriter(database_url, SCHEMA, spool)
    try:
        assert not (spool / f"health-{exited.pid}.json").exists()
        env = {
            "DTC_OTEL_DATABASE_URL": database_url,
            "DTC_OTEL_AUDIT_SPOOL_DIR": str(spool),
            "OTEL_TRACES_EXPORTER": "none",
            "PATH": str(BIN),
        }
        doctor = subprocess.run([str(BIN / "dtc-otel"), "doctor"], env=env, capture_output=True, text=True, timeout=30)
        assert f"writer pid {os.getpid()}" in doctor.stdout, doctor.stdout
        assert "written 0" in doctor.stdout
    finally:
        writer.shutdown(1)

    assert not (spool / f"health-{os.getpid()}.json").exists()


def test_orphaned_replay_file_replayed(audit_db, tmp_path) -> None:
    """A spool file whose replay was cut short by its process dying is replayed by the next writer, once."""
    spool = tmp_path / "orphan-spool"
    spool.mkdir()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    events = [AuditEvent(table="checkpoints", row_id=f"o{i}", status="saved", data={"position": i}) for i in range(3)]
    orphan = spool / f"replay-{exited.pid}-{exited.pid}-0a1b2c3d.jsonl"
    orphan.write_text("".join(event.to_json() + "\n" for event in events))

    writer = AuditWriter(audit_db, SCHEMA, spool)
    writer.enqueue(AuditEvent(table="checkpoints", row_id="now", status="saved", data={"position": 0}))
    assert writer.flush(15)
    writer.shutdown(2)

    stored = {r[0] for r in _rows(audit_db, f"SELECT event_id::text FROM {SCHEMA}.audit_events")}
    assert {e.event_id for e in events} <= stored
    assert not list(spool.glob("*.jsonl"))


def test_exit_with_database_down_spools(tmp_path) -> None:
    """An app under dtc-otel-run that exits while PostgreSQL is unreachable leaves its events in the spool, in time."""
    spool = tmp_path / "exit-spool"
    script = "from dtc_otel import audit\nfor n in range(5):\n    audit.enqueue('approve_quote', {'quote_id': n})\n"
    env = {
        **os.environ,
        "DTC_OTEL_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "DTC_OTEL_AUDIT_SPOOL_DIR": str(spool),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
    }
    run = subprocess.run([str(BIN / "dtc-otel-run"), sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)

    assert run.returncode == 0, run.stderr
    lines = [line for path in spool.glob("spool-*.jsonl") for line in path.read_text().splitlines()]
    assert len(lines) == 5, run.stderr


def test_default_spool_dir_per_database() -> None:
    """Two databases get two spool folders, so events spooled for one are never replayed into the other."""
    from dtc_otel.audit._state import default_spool_dir

    first = default_spool_dir("dtc_audit", "postgresql://app@127.0.0.1:5432/a")
    assert first == default_spool_dir("dtc_audit", "postgresql://app@127.0.0.1:5432/a")
    assert first != default_spool_dir("dtc_audit", "postgresql://app@127.0.0.1:5432/b")
    assert first != default_spool_dir("dtc_audit", "postgresql://app@127.0.0.1:5433/a")
    assert first != default_spool_dir("other", "postgresql://app@127.0.0.1:5432/a")
    assert first == default_spool_dir("dtc_audit", "postgresql://app@127.0.0.1/a?connect_timeout=3")


def test_spool_replayed_at_start(audit_db, tmp_path) -> None:
    """Events an earlier process spooled are written when the next writer starts, before it gets an event of its own."""
    spool = tmp_path / "start-spool"
    spool.mkdir()
    events = [AuditEvent(table="checkpoints", row_id=f"s{i}", status="saved", data={"position": i}) for i in range(4)]
    (spool / "spool-1-0a1b2c3d.jsonl").write_text("".join(event.to_json() + "\n" for event in events))

    writer = AuditWriter(audit_db, SCHEMA, spool)
    assert writer.flush(15)
    writer.shutdown(2)

    stored = {r[0] for r in _rows(audit_db, f"SELECT event_id::text FROM {SCHEMA}.audit_events")}
    assert stored == {e.event_id for e in events}


def test_missing_tables_error_names_migrate(database_url, monkeypatch) -> None:
    """mark_once() against a database without the audit tables names dtc-otel migrate as the fix."""
    monkeypatch.setattr(audit_state, "database_url", database_url)
    monkeypatch.setattr(audit_state, "schema", "not_migrated")
    monkeypatch.setattr(audit_state, "_pool", None)
    try:
        with pytest.raises(RuntimeError, match=r"audit tables not found in schema 'not_migrated'.*run `dtc-otel migrate`"):
            audit.mark_once("portal_welcome_sent", customer_id=7)
    finally:
        if audit_state._pool is not None:
            audit_state._pool.close()
