"""What gets traced: streaming, every httpx call style, psycopg statements, and the OTEL_* switches."""

from __future__ import annotations

import time

import httpx

from tests.conftest import free_port, wait_http


def _start(launch, **env: str) -> int:
    port = free_port()
    launch(["python", "svc.py"], PORT=str(port), **env)
    wait_http(f"http://127.0.0.1:{port}/pong")
    return port


def test_streaming_response_is_one_span(launch, receiver) -> None:
    """A 50-chunk streaming response produces one server span, no per-message spans."""
    port = _start(launch)

    body = httpx.get(f"http://127.0.0.1:{port}/stream").text

    assert body.count("chunk") == 50
    spans = receiver.wait_for(lambda spans: any(s.attributes.get("http.route") == "/stream" for s in spans))
    server = next(s for s in spans if s.attributes.get("http.route") == "/stream")
    time.sleep(0.5)
    in_trace = [s for s in receiver.spans if s.trace_id == server.trace_id]
    assert [s.name for s in in_trace] == ["GET /stream"]


def test_sync_route_traces_module_helper_and_send(launch, receiver) -> None:
    """httpx.get and Client.send in a thread-pool route both produce client spans in the request's trace."""
    port = _start(launch)

    assert httpx.get(f"http://127.0.0.1:{port}/sync").json() == {"status": [200, 200]}

    spans = receiver.wait_for(
        lambda spans: any(s.attributes.get("http.route") == "/sync" for s in spans)
        and sum(s.kind == "CLIENT" for s in spans) >= 2
    )
    server = next(s for s in spans if s.attributes.get("http.route") == "/sync")
    clients = [s for s in spans if s.kind == "CLIENT" and s.parent_span_id == server.span_id]
    assert len(clients) == 2
    assert all(s.attributes["http.request.method"] == "GET" for s in clients)
    assert all(s.attributes["url.full"].endswith("/pong") for s in clients)
    downstream = [s for s in spans if s.attributes.get("http.route") == "/pong" and s.trace_id == server.trace_id]
    assert {s.parent_span_id for s in downstream} == {s.span_id for s in clients}, "traceparent was not sent"


def test_inbound_traceparent_continues_trace(launch, receiver) -> None:
    """A valid W3C traceparent makes the server span a child of the caller's span."""
    port = _start(launch)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    httpx.get(f"http://127.0.0.1:{port}/pong", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})

    spans = receiver.wait_for(lambda spans: any(s.trace_id == trace_id for s in spans))
    server = next(s for s in spans if s.trace_id == trace_id)
    assert server.parent_span_id == "00f067aa0ba902b7"


def test_sql_parameters_only_when_opted_in(launch, receiver, database_url) -> None:
    """DTC_OTEL_CAPTURE_SQL_PARAMETERS=true adds parameter values to psycopg spans."""
    port = _start(launch, SVC_DATABASE_URL=database_url, DTC_OTEL_CAPTURE_SQL_PARAMETERS="true")

    httpx.get(f"http://127.0.0.1:{port}/hello")

    spans = receiver.wait_for(lambda spans: any("db.query.text" in s.attributes or "db.statement" in s.attributes for s in spans))
    query = next(s for s in spans if "db.query.text" in s.attributes or "db.statement" in s.attributes)
    assert "41" in str(query.attributes["db.statement.parameters"])


def test_disabled_instrumentation_is_skipped(launch, receiver) -> None:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=httpx leaves outbound calls untraced."""
    port = _start(launch, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="httpx")

    httpx.get(f"http://127.0.0.1:{port}/hello")

    spans = receiver.wait_for(lambda spans: any(s.attributes.get("http.route") == "/hello" for s in spans))
    time.sleep(0.5)
    assert not [s for s in receiver.spans if s.kind == "CLIENT"]
    assert spans


def test_sampler_always_off_exports_nothing(launch, receiver) -> None:
    """OTEL_TRACES_SAMPLER=always_off: requests work, no span is exported."""
    port = _start(launch, OTEL_TRACES_SAMPLER="always_off")

    for _ in range(5):
        assert httpx.get(f"http://127.0.0.1:{port}/hello").status_code == 200
    time.sleep(1.0)

    assert receiver.spans == []


def test_service_name_and_resource_attributes(launch, receiver) -> None:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES reach the exported resource."""
    port = _start(launch, OTEL_SERVICE_NAME="quotes-api", OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")

    httpx.get(f"http://127.0.0.1:{port}/pong")

    spans = receiver.wait_for(lambda spans: len(spans) >= 1)
    resource = spans[0].resource
    assert resource["service.name"] == "quotes-api"
    assert resource["deployment.environment"] == "test"
    assert resource["telemetry.distro.name"] == "dtc-otel"
    assert len(resource["service.instance.id"]) == 36


def test_console_exporter_prints_spans(launch) -> None:
    """OTEL_TRACES_EXPORTER=console prints finished spans to stdout."""
    app = launch(
        ["python", "-c", "from opentelemetry import trace\nwith trace.get_tracer('t').start_as_current_span('console-check'): pass"],
        OTEL_TRACES_EXPORTER="console",
    )
    app.process.wait(30)

    app.wait_for_line('"name": "console-check"')


def test_server_headers_captured_when_configured(launch, receiver) -> None:
    """The upstream OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_* settings add header attributes."""
    port = _start(
        launch,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-tenant,x-api-token",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE="content-type",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS="x-api-token",
    )

    httpx.get(f"http://127.0.0.1:{port}/pong", headers={"X-Tenant": "acme", "X-Api-Token": "t0ken-value", "X-Other": "1"})

    def tagged(spans: list) -> list:
        return [span for span in spans if "http.request.header.x_tenant" in span.attributes]

    [server] = tagged(receiver.wait_for(lambda spans: bool(tagged(spans))))
    assert server.attributes["http.request.header.x_tenant"] == ["acme"]
    assert server.attributes["http.request.header.x_api_token"] == ["[REDACTED]"]
    assert server.attributes["http.response.header.content_type"] == ["application/json"]
    assert not any("x_other" in key for key in server.attributes)


def test_server_headers_not_captured_by_default(launch, receiver) -> None:
    """Without the capture settings, no header attribute is added."""
    port = _start(launch)

    httpx.get(f"http://127.0.0.1:{port}/pong", headers={"X-Tenant": "acme"})

    spans = receiver.wait_for(lambda spans: len(spans) >= 2)
    assert not any(key.startswith("http.request.header.") for span in spans for key in span.attributes)
