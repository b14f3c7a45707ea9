"""The portal example, the README's main job, runs under dtc-otel-run and correlates logs with spans."""

from __future__ import annotations

from pathlib import Path

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
