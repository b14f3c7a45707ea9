"""The portal example, the README's main job, runs under dtc-otel-run and correlates logs with spans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parent.parent


def test_portal_demo_logs_match_exported_spans(launch, receiver, database_url) -> None:
    """`dtc-otel-run python examples/portal/app.py --demo` exits 0; its log trace IDs are exported spans."""
    app = launch(
        ["python", "examples/portal/app.py", "--demo", "--port", "0"],
        cwd=ROOT,
        DTC_OTEL_DATABASE_URL=database_url,
    )
    assert app.process.wait(120) == 0, app.output()

    spans = receiver.wait_for(lambda spans: any(s.attributes.get("http.route") == "/quotes/{quote_id}/approve" for s in spans))
    servers = {s.trace_id: s for s in spans if s.kind == "SERVER"}
    assert {s.resource["service.name"] for s in spans} == {"portal"}

    lines = [line for line in app.json_lines() if "quote_id" in line and "trace_id" in line]
    assert lines, "no log line with quote_id and trace_id"
    for line in lines:
        assert line["trace_id"] in servers, f"log line {line['event']!r} has a trace_id that was not exported"

    partner_failures = [line for line in app.json_lines() if line.get("event") == "partner call failed"]
    assert partner_failures, "the partner failure lines lost their partner request ID"
    assert all("trace_id" in line for line in partner_failures)

    approve = [s for s in spans if s.attributes.get("http.route") == "/quotes/{quote_id}/approve"]
    children = {s.parent_span_id for s in spans if s.kind == "CLIENT"}
    assert any(s.span_id in children for s in approve), "no client span below an approve request"


def run_demo(launch, database_url: str):
    """Run the portal demo under dtc-otel-run against *database_url*; return it after it exited 0."""
    app = launch(
        ["python", "examples/portal/app.py", "--demo", "--port", "0"], cwd=ROOT, DTC_OTEL_DATABASE_URL=database_url
    )
    assert app.process.wait(120) == 0, app.output()
    return app


def fetch_all(database_url: str, query: str, params: tuple = ()) -> list[dict]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


def test_portal_demo_writes_audit_tables(launch, receiver, database_url) -> None:
    """The demo's jobs, webhook deliveries and welcome marker are in dtc_audit when it exits."""
    run_demo(launch, database_url)

    jobs = fetch_all(database_url, "SELECT * FROM dtc_audit.job_queue ORDER BY created_at")
    chains = {(job["entity_ids"].get("quote_id"), job["kind"]) for job in jobs}
    assert chains == {
        (42, "prepare_quote_documents"),
        (42, "send_quote_email"),
        (44, "prepare_quote_documents"),
        (44, "send_quote_email"),
    }
    for job in jobs:
        assert job["status"] == "succeeded", job
        assert job["entity_ids"]["customer_id"] == 7, job
        assert job["max_attempts"] == 3, job

    retried = next(
        job for job in jobs if job["kind"] == "prepare_quote_documents" and job["entity_ids"]["quote_id"] == 44
    )
    assert retried["attempts"] == 2
    assert "DocumentRendererTimeout" in retried["last_error"]
    events = fetch_all(
        database_url, "SELECT * FROM dtc_audit.job_events WHERE job_id = %s ORDER BY id", (retried["job_id"],)
    )
    transitions = [event["transition"] for event in events]
    assert transitions == ["enqueued", "started", "failed", "retrying", "started", "succeeded"]
    assert [event["attempt"] for event in events] == [0, 1, 1, 1, 2, 2]
    assert "simulated" in events[2]["error"]

    deliveries = fetch_all(database_url, "SELECT * FROM dtc_audit.webhook_logs ORDER BY id")
    assert len(deliveries) == 3, deliveries
    first, duplicate, forged = deliveries
    assert first["signature_valid"] is True
    assert first["event_type"] == "payment.succeeded"
    assert first["duplicate_of"] is None
    assert first["status_code"] == 200
    assert first["processed_at"] is not None
    assert first["entity_ids"]["quote_id"] == 44
    assert duplicate["duplicate_of"] == first["id"]
    assert duplicate["provider_event_id"] == first["provider_event_id"]
    assert duplicate["status_code"] == 200
    assert forged["signature_valid"] is False
    assert forged["signature_reason"] == "no_matching_signature"
    assert forged["status_code"] == 401

    markers = fetch_all(database_url, "SELECT * FROM dtc_audit.audit_markers")
    assert [marker["marker_key"] for marker in markers] == ["portal_welcome_sent:customer_id=7"]

    charge_id = f"ch_{first['provider_event_id']}"
    payments = fetch_all(database_url, "SELECT * FROM payments WHERE partner_charge_id = %s", (charge_id,))
    assert len(payments) == 1, "the duplicate delivery recorded a second payment"

    spans = receiver.wait_for(lambda spans: any(s.name == "job send_quote_email" for s in spans))
    job_spans = [s for s in spans if s.name == "job prepare_quote_documents" and s.attributes.get("quote_id") == 44]
    assert sorted(s.attributes["dtc.job.attempt"] for s in job_spans) == [1, 2]


def test_dtc_otel_entity_lists_demo_rows(launch, receiver, database_url) -> None:
    """`dtc-otel entity quote_id=44` lists the demo's job rows and their trace IDs."""
    run_demo(launch, database_url)

    result = subprocess.run(
        [str(Path(sys.executable).parent / "dtc-otel"), "entity", "quote_id=44"],
        env={**os.environ, "DTC_OTEL_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    job_rows = [line for line in result.stdout.splitlines() if line.startswith("job_queue ")]
    assert len(job_rows) == 2, result.stdout
    assert "trace(s)" in result.stdout
    jobs = fetch_all(database_url, "SELECT trace_id FROM dtc_audit.job_queue WHERE entity_ids @> '{\"quote_id\": 44}'")
    assert len(jobs) == 2
    for job in jobs:
        assert f"  {job['trace_id']}" in result.stdout


def test_portal_demo_twice_keeps_one_marker(launch, receiver, database_url) -> None:
    """A second demo run against the same database exits 0 and sends no second welcome mail."""
    first = run_demo(launch, database_url)
    second = run_demo(launch, database_url)

    assert any(line.get("event") == "welcome mail sent" for line in first.json_lines())
    assert not any(line.get("event") == "welcome mail sent" for line in second.json_lines())
    markers = fetch_all(database_url, "SELECT * FROM dtc_audit.audit_markers WHERE name = 'portal_welcome_sent'")
    assert len(markers) == 1
    originals = fetch_all(
        database_url, "SELECT * FROM dtc_audit.webhook_logs WHERE signature_valid AND duplicate_of IS NULL ORDER BY id"
    )
    assert [row["status_code"] for row in originals] == [200, 200], "the second run's delivery was taken for a repeat"
    jobs = fetch_all(database_url, "SELECT status, count(*) AS jobs FROM dtc_audit.job_queue GROUP BY status")
    assert jobs == [{"status": "succeeded", "jobs": 8}]
