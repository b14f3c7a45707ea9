"""Audit writer throughput against real PostgreSQL, with two baselines in the same run.

* naive: one INSERT and one COMMIT per event (what a hand-written audit log often does),
* copy: COPY of one audit_events row per event into an indexed copy of that table,
* copy_all_tables: COPY of the three rows the writer produces per event (job_queue,
  job_events, audit_events) into indexed copies: the practical upper limit,
* writer: dtc-otel's AuditWriter, events enqueued as fast as possible and flushed.

It also times ``enqueue`` calls while the writer is saturated, which is the cost on the
request path. Run by hand:

    python benchmarks/audit_writer.py --database-url postgresql://postgres@127.0.0.1:5432/postgres --events 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._schema import apply_migrations
from dtc_otel.audit._writer import AuditWriter

SCHEMA = "dtc_audit"


def _events(count: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            table="job_queue",
            row_id=str(uuid.uuid4()),
            status="pending",
            data={"kind": "bench", "attempts": 0, "max_attempts": 3, "payload": {"n": index}, "transition": "enqueued"},
            entity_ids={"quote_id": index % 500},
            trace_id=uuid.uuid4().hex,
        )
        for index in range(count)
    ]


def naive(url: str, count: int) -> float:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_naive (id bigserial, job_id text, status text, payload jsonb)")
        started = time.perf_counter()
        for index in range(count):
            conn.execute(
                "INSERT INTO bench_naive (job_id, status, payload) VALUES (%s, %s, %s)",
                (str(uuid.uuid4()), "pending", json.dumps({"n": index})),
            )
            conn.commit()
        return count / (time.perf_counter() - started)


def copy(url: str, count: int) -> float:
    rows = [
        (str(uuid.uuid4()), f"quote:{i % 500}", "job_queue", str(uuid.uuid4()), "pending", json.dumps({"n": i}),
         json.dumps({"quote_id": i % 500}), uuid.uuid4().hex)
        for i in range(count)
    ]  # fmt: skip
    with psycopg.connect(url) as conn:
        # Same columns and indexes as the real audit_events table, so the
        # limit includes the index upkeep every audit row pays.
        conn.execute(f"CREATE TABLE IF NOT EXISTS bench_copy (LIKE {SCHEMA}.audit_events INCLUDING ALL)")
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cursor:
            statement = "COPY bench_copy (event_id, topic, source_table, row_id, status, payload, entity_ids, trace_id) FROM STDIN"
            with cursor.copy(statement) as copy_:
                for row in rows:
                    copy_.write_row(row)
        conn.commit()
        return count / (time.perf_counter() - started)


def copy_all_tables(url: str, count: int) -> float:
    """COPY the rows the writer produces per event (job, history, audit event) into indexed copies."""
    jobs = [(str(uuid.uuid4()), "bench", "pending", 0, 3, json.dumps({"n": i}), json.dumps({"quote_id": i % 500}), uuid.uuid4().hex) for i in range(count)]
    now = datetime.now(timezone.utc)
    history = [(str(uuid.uuid4()), job[0], "bench", "enqueued", 0, job[7], now) for job in jobs]
    events = [(h[0], f"quote:{i % 500}", "job_queue", h[1], "pending", "{}", jobs[i][6], jobs[i][7]) for i, h in enumerate(history)]
    with psycopg.connect(url) as conn:
        for name in ("job_queue", "job_events", "audit_events"):
            conn.execute(f"CREATE TABLE IF NOT EXISTS bench3_{name} (LIKE {SCHEMA}.{name} INCLUDING ALL)")
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cursor:
            specs = [
                ("bench3_job_queue (job_id, kind, status, attempts, max_attempts, payload, entity_ids, trace_id)", jobs),
                ("bench3_job_events (event_id, job_id, kind, transition, attempt, trace_id, occurred_at)", history),
                ("bench3_audit_events (event_id, topic, source_table, row_id, status, payload, entity_ids, trace_id)", events),
            ]
            for target, rows in specs:
                with cursor.copy(f"COPY {target} FROM STDIN") as copy_:
                    for row in rows:
                        copy_.write_row(row)
        conn.commit()
        return count / (time.perf_counter() - started)


def empty_tables(url: str) -> None:
    """Empty the writer's tables and the COPY's copies, so every timed run starts with the same index sizes."""
    with psycopg.connect(url) as conn:
        for name in ("job_queue", "job_events", "audit_events"):
            conn.execute(f"CREATE TABLE IF NOT EXISTS bench3_{name} (LIKE {SCHEMA}.{name} INCLUDING ALL)")
            conn.execute(f"TRUNCATE bench3_{name}, {SCHEMA}.{name}")


def writer(url: str, count: int) -> tuple[float, float, float]:
    events = _events(count)
    spool = Path(tempfile.mkdtemp(prefix="dtc-otel-bench-spool-"))
    audit_writer = AuditWriter(url, SCHEMA, spool, max_queue=count + 1, batch_size=1000)
    # Connections, temporary tables and threads exist before the clock starts,
    # as the baselines' connections do: this measures the sustained rate.
    for event in _events(20):
        audit_writer.enqueue(event)
    assert audit_writer.flush(60), "writer did not start"
    enqueue_ns = []
    started = time.perf_counter()
    for event in events:
        before = time.perf_counter_ns()
        audit_writer.enqueue(event)
        enqueue_ns.append(time.perf_counter_ns() - before)
    assert audit_writer.flush(300), "writer did not finish"
    elapsed = time.perf_counter() - started
    audit_writer.shutdown(5)
    enqueue_ns.sort()
    return count / elapsed, enqueue_ns[len(enqueue_ns) // 2] / 1000, enqueue_ns[int(len(enqueue_ns) * 0.99)] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--naive-events", type=int, default=3_000, help="fewer, because naive is slow")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    name = f"dtc_otel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(options.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(options.database_url, dbname=name)
    try:
        apply_migrations(url, SCHEMA)
        results: dict[str, list[float]] = {
            "naive": [], "copy": [], "copy_all_tables": [], "writer": [], "enqueue_p50_us": [], "enqueue_p99_us": [],
        }  # fmt: skip
        for round_number in range(1, options.rounds + 1):
            # Interleaved: every round runs every method, so drift hits all alike.
            results["naive"].append(naive(url, options.naive_events))
            results["copy"].append(copy(url, options.events))
            # The three-table COPY runs just before and just after the writer:
            # this machine's speed drifts within seconds, and the mean of the
            # two runs is the baseline the writer met at the same time.
            empty_tables(url)
            before = copy_all_tables(url, options.events)
            empty_tables(url)
            rate, p50, p99 = writer(url, options.events)
            empty_tables(url)
            after = copy_all_tables(url, options.events)
            results["copy_all_tables"].append((before + after) / 2)
            results["writer"].append(rate)
            results["enqueue_p50_us"].append(p50)
            results["enqueue_p99_us"].append(p99)
            print(f"round {round_number}: naive {results['naive'][-1]:,.0f}/s, copy {results['copy'][-1]:,.0f}/s, "
                  f"copy all tables {results['copy_all_tables'][-1]:,.0f}/s, writer {rate:,.0f}/s, "
                  f"enqueue p50 {p50:.1f} us p99 {p99:.1f} us")  # fmt: skip
        medians = {key: statistics.median(values) for key, values in results.items()}
        print()
        print("| method | events/s (median) | vs COPY into audit_events | vs COPY of all three rows |")
        print("| --- | --- | --- | --- |")
        for key in ("naive", "writer", "copy_all_tables", "copy"):
            print(
                f"| {key} | {medians[key]:,.0f} | {medians[key] / medians['copy']:.2f}x "
                f"| {medians[key] / medians['copy_all_tables']:.2f}x |"
            )
        # The machine's speed drifts between rounds, so the ratio within each
        # round is shown too.
        ratios = sorted(w / c for w, c in zip(results["writer"], results["copy_all_tables"]))
        print(f"\nwriter vs COPY of all three rows, per round: {', '.join(f'{r:.2f}x' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f}x)")  # fmt: skip
        print(f"enqueue while saturated: p50 {medians['enqueue_p50_us']:.1f} us, p99 {medians['enqueue_p99_us']:.1f} us")
    finally:
        with psycopg.connect(options.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
