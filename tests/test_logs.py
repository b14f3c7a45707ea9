"""Trace IDs on log lines: the processor itself, and apps that configure logging their own way."""

from __future__ import annotations

import io
import json

import httpx
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from dtc_otel import add_trace_ids
from dtc_otel._logs import install_into_structlog_configure
from tests.conftest import free_port, wait_http

_tracer = TracerProvider().get_tracer("tests")


class TestAddTraceIds:
    def test_inside_span_adds_lowercase_hex_ids(self) -> None:
        """Inside a span: 32 and 16 lowercase hex digits matching the span."""
        with _tracer.start_as_current_span("work") as span:
            event = add_trace_ids(None, "info", {"event": "x"})
            context = span.get_span_context()

        assert event["trace_id"] == format(context.trace_id, "032x")
        assert event["span_id"] == format(context.span_id, "016x")
        assert event["trace_id"] == event["trace_id"].lower()

    def test_outside_span_adds_nothing(self) -> None:
        """Outside any span neither key appears."""
        event = add_trace_ids(None, "info", {"event": "x"})

        assert "trace_id" not in event
        assert "span_id" not in event

    def test_invalid_context_adds_nothing(self) -> None:
        """An all-zero span context never produces all-zero IDs."""
        invalid = NonRecordingSpan(SpanContext(0, 0, is_remote=False, trace_flags=TraceFlags(0)))
        with trace.use_span(invalid):
            event = add_trace_ids(None, "info", {"event": "x"})

        assert "trace_id" not in event

    def test_consecutive_spans_get_their_own_ids(self) -> None:
        """The per-span cache never hands one span's IDs to the next."""
        seen = []
        for _ in range(3):
            with _tracer.start_as_current_span("work") as span:
                seen.append((add_trace_ids(None, "info", {})["span_id"], format(span.get_span_context().span_id, "016x")))
            assert "span_id" not in add_trace_ids(None, "info", {})

        assert all(logged == actual for logged, actual in seen)
        assert len({logged for logged, _ in seen}) == 3


def test_app_configure_keeps_trace_ids() -> None:
    """An app's own structlog.configure call still gets trace IDs before its renderer."""
    install_into_structlog_configure()
    output = io.StringIO()
    try:
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            logger_factory=structlog.WriteLoggerFactory(output),
            cache_logger_on_first_use=False,
        )
        with _tracer.start_as_current_span("work") as span:
            structlog.get_logger().info("inside")
    finally:
        structlog.reset_defaults()

    line = json.loads(output.getvalue())
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["level"] == "info"


def test_subprocess_app_with_own_structlog_config(launch, receiver) -> None:
    """Under dtc-otel-run, an app that calls structlog.configure itself still logs trace IDs."""
    port = free_port()
    app = launch(["python", "svc.py"], PORT=str(port), SVC_CONFIGURE_STRUCTLOG="1")
    wait_http(f"http://127.0.0.1:{port}/pong")

    httpx.get(f"http://127.0.0.1:{port}/hello")

    spans = receiver.wait_for(lambda spans: any(s.attributes.get("http.route") == "/hello" for s in spans))
    server = next(s for s in spans if s.attributes.get("http.route") == "/hello")
    app.wait_for_line("hello called")
    line = next(r for r in app.json_lines() if r.get("event") == "hello called")
    assert line["trace_id"] == server.trace_id
    assert "timestamp" not in line, "the app's own processor chain was replaced"


def test_catch_all_handler_line_carries_trace_id(launch, receiver) -> None:
    """The exception handler's log line carries the failing request's trace ID."""
    port = free_port()
    app = launch(["python", "svc.py"], PORT=str(port))
    wait_http(f"http://127.0.0.1:{port}/pong")

    response = httpx.get(f"http://127.0.0.1:{port}/boom")

    assert response.status_code == 500
    spans = receiver.wait_for(lambda spans: any(s.attributes.get("http.route") == "/boom" for s in spans))
    server = next(s for s in spans if s.attributes.get("http.route") == "/boom")
    assert server.attributes["http.response.status_code"] == 500
    assert server.status_code == 2, "the server span of a 500 is not marked as an error"
    assert server.attributes["error.type"] == "RuntimeError"
    app.wait_for_line("unhandled error")
    line = next(r for r in app.json_lines() if r.get("event") == "unhandled error")
    assert line["trace_id"] == server.trace_id
    app.wait_for_line("Exception in ASGI application")
    uvicorn_line = next(r for r in app.json_lines() if str(r.get("event")).startswith("Exception in ASGI application"))
    assert uvicorn_line["trace_id"] == server.trace_id, "uvicorn's traceback line lost the trace ID"


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_log_format_setting(launch, log_format: str) -> None:
    """DTC_OTEL_LOG_FORMAT picks JSON or readable console lines."""
    app = launch(
        ["python", "-c", "import structlog; structlog.get_logger().info('format check', quote_id=44)"],
        DTC_OTEL_LOG_FORMAT=log_format,
        OTEL_TRACES_EXPORTER="none",
    )
    app.process.wait(30)
    app.wait_for_line("format check")

    line = next(line for line in app.lines if "format check" in line)
    if log_format == "json":
        assert json.loads(line)["quote_id"] == 44
    else:
        assert not line.startswith("{")
        assert "quote_id" in line


def test_long_message_keeps_both_ends() -> None:
    """A message over the size limit keeps its start and its last line, which names the error."""
    from dtc_otel._logs import redact_event

    traceback_text = "Traceback (most recent call last):\n" + "  frame line\n" * 400 + "OperationalError: database missing"
    event = redact_event(None, "error", {"event": traceback_text, "payload": "x" * 5000})

    assert event["event"].startswith("Traceback (most recent call last):")
    assert event["event"].endswith("OperationalError: database missing")
    assert "characters cut" in event["event"]
    assert len(event["event"]) < 2200
    assert event["payload"].endswith("(5000 characters)")


def test_access_timestamp_matches_datetime() -> None:
    """The access line's cached timestamp equals datetime's ISO form, microseconds always written."""
    from datetime import datetime, timezone

    from dtc_otel._logs import _iso_utc

    for created in (1764900000.0, 1764900000.25, 1764900001.123456, 1764986399.5):
        expected = datetime.fromtimestamp(created, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert _iso_utc(created) == expected
    # Back to an earlier second after a later one: the cache must not keep the later date.
    assert _iso_utc(1764900000.5).startswith("2025-12-05T02:00:00.")
