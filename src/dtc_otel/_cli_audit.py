"""``dtc-otel`` subcommands for the audit tables: migrate, stuck, entity, doctor."""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from dtc_otel._config import ConfigError, load_settings

__all__ = ["add_audit_commands"]


def _settings_or_exit(options: argparse.Namespace) -> tuple[str, str]:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(f"dtc-otel: {exc}") from exc
    url = getattr(options, "database_url", None) or settings.database_url
    schema = getattr(options, "schema", None) or settings.audit_schema
    if not url and not getattr(options, "sql", False):
        raise SystemExit("dtc-otel: no database: set DTC_OTEL_DATABASE_URL or pass --database-url postgresql://...")

    return url or "", schema


def _cmd_migrate(options: argparse.Namespace) -> int:
    from dtc_otel.audit._schema import apply_migrations, render_migrations

    url, schema = _settings_or_exit(options)
    if options.sql:
        try:
            print(render_migrations(schema, record=True))
        except BrokenPipeError:
            # Output piped into head or a pager that closed early.
            return 0
        return 0

    applied = apply_migrations(url, schema)
    if applied:
        print(f"applied to schema {schema}: {', '.join(applied)}")
    else:
        print(f"schema {schema} is up to date")

    return 0


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, connect_timeout=5)


def _print_rows(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        print("(no rows)")
        return
    text = [[("" if value is None else str(value)) for value in row] for row in rows]
    widths = [max(len(columns[i]), *(len(row[i]) for row in text)) for i in range(len(columns))]
    print("  ".join(name.ljust(width) for name, width in zip(columns, widths)))
    for row in text:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)))


def _cmd_stuck(options: argparse.Namespace) -> int:
    from psycopg import sql

    url, schema = _settings_or_exit(options)
    query = sql.SQL(
        "SELECT job_id, kind, status, attempts, max_attempts, "
        "date_trunc('second', now() - updated_at) AS waiting, trace_id, last_error "
        "FROM {}.job_queue WHERE status IN ('pending', 'running', 'retrying') "
        "AND updated_at < now() - make_interval(secs => %s) ORDER BY updated_at"
    ).format(sql.Identifier(schema))
    with _connect(url) as conn:
        cursor = conn.execute(query, (options.older_than,))
        rows = cursor.fetchall()
        columns = [column.name for column in cursor.description or []]
    _print_rows(columns, rows)

    return 1 if rows and options.exit_code else 0


def _parse_entity(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise SystemExit(f"dtc-otel entity: invalid {text!r}: expected key=value, such as quote_id=44")
    return key, int(value) if value.isdigit() else value


def _cmd_entity(options: argparse.Namespace) -> int:
    from psycopg import sql

    url, schema = _settings_or_exit(options)
    key, value = _parse_entity(options.entity)
    # jsonb containment (@>) uses the GIN indexes on entity_ids.
    match = json.dumps({key: value})
    s = sql.Identifier(schema)
    query = sql.SQL(
        "SELECT 'job_queue' AS source, job_id AS row_id, kind AS what, status, updated_at AS at, trace_id "
        "FROM {s}.job_queue WHERE entity_ids @> %(m)s::jsonb "
        "UNION ALL SELECT 'webhook_logs', delivery_id::text, provider || ' ' || coalesce(event_type, ''), "
        "coalesce(status_code::text, 'received'), received_at, trace_id FROM {s}.webhook_logs WHERE entity_ids @> %(m)s::jsonb "
        "UNION ALL SELECT 'audit_markers', marker_key, name, 'marked', created_at, trace_id "
        "FROM {s}.audit_markers WHERE entity_ids @> %(m)s::jsonb "
        "UNION ALL SELECT 'audit_events', row_id, 'change in ' || source_table, status, created_at, trace_id "
        "FROM {s}.audit_events WHERE entity_ids @> %(m)s::jsonb "
        "ORDER BY at"
    ).format(s=s)
    with _connect(url) as conn:
        cursor = conn.execute(query, {"m": match})
        rows = cursor.fetchall()
        columns = [column.name for column in cursor.description or []]
    _print_rows(columns, rows)
    # In the order they first appear, which is time order.
    traces = list(dict.fromkeys(row[-1] for row in rows if row[-1]))
    if traces:
        print(f"\n{len(traces)} trace(s); open one in Jaeger at http://127.0.0.1:16686/trace/<trace_id>:")
        for trace_id in traces:
            print(f"  {trace_id}")

    return 0


def _check(label: str, ok: bool, detail: str) -> bool:
    print(f"[{'ok' if ok else 'FAIL'}] {label}: {detail}")
    return ok


def _cmd_doctor(options: argparse.Namespace) -> int:
    from dtc_otel.audit._schema import load_migrations
    from dtc_otel.audit._state import default_spool_dir
    from dtc_otel.audit._writer import process_alive

    healthy = True
    try:
        settings = load_settings()
        _check("configuration", True, "all OTEL_* and DTC_OTEL_* values are valid")
    except ConfigError as exc:
        _check("configuration", False, str(exc))
        return 1

    url = options.database_url or settings.database_url
    audit_schema = options.schema or settings.audit_schema
    if not url:
        healthy &= _check("database", False, "DTC_OTEL_DATABASE_URL is not set")
    else:
        try:
            with _connect(url) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
                _check("database", True, f"reachable, PostgreSQL {version}")
                from psycopg import sql

                exists = conn.execute("SELECT to_regclass(%s)", (f"{audit_schema}.schema_migrations",)).fetchone()[0]
                expected = {m.version for m in load_migrations()}
                applied: set[int] = set()
                if exists:
                    applied = {
                        row[0]
                        for row in conn.execute(
                            sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(audit_schema))
                        )
                    }
                missing = sorted(expected - applied)
                healthy &= _check(
                    "migrations",
                    not missing,
                    f"schema {audit_schema} is up to date" if not missing
                    else f"{len(missing)} not applied ({', '.join(f'{v:04d}' for v in missing)}); run: dtc-otel migrate",
                )
        except Exception as exc:  # noqa: BLE001 - doctor reports every failure
            healthy &= _check("database", False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")

    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    if "otlp" not in settings.traces_exporters:
        _check("collector", True, f"not used (OTEL_TRACES_EXPORTER={','.join(settings.traces_exporters) or 'none'})")
    else:
        try:
            request = urllib.request.Request(endpoint.rstrip("/") + "/v1/traces", data=b"", method="POST",
                                             headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=3) as response:
                _check("collector", True, f"{endpoint} answered {response.status}")
        except urllib.error.HTTPError as exc:
            _check("collector", True, f"{endpoint} is reachable (answered {exc.code})")
        except OSError as exc:
            # Not fatal: the app runs and logs without a collector; spans are dropped.
            print(f"[warn] collector: {endpoint} is not reachable ({getattr(exc, 'reason', exc)}); spans are dropped until it is")

    spool = Path(settings.audit_spool_dir or default_spool_dir(settings.audit_schema, settings.database_url))
    # replay-* files are being replayed, or were when their process died; the next writer takes them over.
    waiting = [*spool.glob("spool-*.jsonl"), *spool.glob("replay-*.jsonl")] if spool.is_dir() else []
    spooled = sum(p.stat().st_size for p in waiting)
    healthy &= _check("audit spool", spooled == 0, f"{spooled} bytes waiting in {spool}" if spooled else f"empty ({spool})")
    stale = 0
    for path in sorted(spool.glob("health-*.json")) if spool.is_dir() else []:
        try:
            health = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not process_alive(int(health.get("pid", 0))):
            # The writer's process has exited; its last report is history.
            stale += 1
            continue
        age = time.time() - float(health.get("updated_at", 0))
        print(
            f"       writer pid {health.get('pid')} ({age:.0f} s ago): queue {health.get('queue_depth')}, "
            f"last batch {health.get('last_batch_size')} in {health.get('last_batch_ms')} ms, "
            f"written {health.get('written')}, retries {health.get('retries')}, spooled {health.get('spooled')}, "
            f"dropped {health.get('dropped')}"
        )
    if stale:
        print(f"       {stale} report(s) from writers whose process has exited are not shown")

    return 0 if healthy else 1


def add_audit_commands(commands: Any) -> None:
    """Register the audit subcommands on the ``dtc-otel`` parser."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--database-url", help="PostgreSQL URL (default: DTC_OTEL_DATABASE_URL)")
        parser.add_argument("--schema", help="audit schema (default: DTC_OTEL_AUDIT_SCHEMA or dtc_audit)")

    migrate = commands.add_parser("migrate", help="create or update the audit tables")
    common(migrate)
    migrate.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    migrate.set_defaults(handler=_cmd_migrate)

    stuck = commands.add_parser("stuck", help="list jobs pending, running or retrying for too long")
    common(stuck)
    stuck.add_argument("--older-than", type=float, default=300.0, help="seconds since the last change (default: 300)")
    stuck.add_argument("--exit-code", action="store_true", help="exit 1 when any job is stuck, for monitoring")
    stuck.set_defaults(handler=_cmd_stuck)

    entity = commands.add_parser("entity", help="list every audit row for an entity, such as quote_id=44")
    common(entity)
    entity.add_argument("entity", help="key=value, such as quote_id=44")
    entity.set_defaults(handler=_cmd_entity)

    doctor = commands.add_parser("doctor", help="check configuration, database, migrations, collector and the audit writer")
    common(doctor)
    doctor.set_defaults(handler=_cmd_doctor)

