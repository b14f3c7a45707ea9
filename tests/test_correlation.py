"""Correlation across boundaries: inbound IDs, response headers, outbound headers, partner IDs, entities."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import pytest

from dtc_otel._partners import PartnerMatcher, sanitize_partner_value
from dtc_otel._request_id import check_request_id
from tests.conftest import free_port, wait_http
from tests.partner_stub import PartnerStub

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID_PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def partner():
    stub = PartnerStub()
    yield stub
    stub.stop()


@pytest.fixture
def service(launch, partner):
    """Start svc.py under dtc-otel-run; return (base URL, launched process)."""

    def start(**env: str):
        port = free_port()
        app = launch(["python", "svc.py"], PORT=str(port), PARTNER_URL=partner.url, **env)
        wait_http(f"http://127.0.0.1:{port}/pong")
        return f"http://127.0.0.1:{port}", app

    return start


def _server(receiver, route: str, trace_id: str | None = None):
    def found(spans):
        return [s for s in spans if s.kind == "SERVER" and s.attributes.get("http.route") == route and (trace_id is None or s.trace_id == trace_id)]

    return found(receiver.wait_for(found))[0]


class TestInboundTraceContext:
    def test_valid_traceparent_continues_trace(self, service, receiver) -> None:
        """A valid traceparent makes our server span a child of the caller's span."""
        base, _ = service()

        response = httpx.get(f"{base}/pong", headers={"traceparent": VALID_PARENT})

        server = _server(receiver, "/pong", TRACE_ID)
        assert server.parent_span_id == "00f067aa0ba902b7"
        assert response.headers["x-request-id"] == TRACE_ID

    @pytest.mark.parametrize(
        "traceparent",
        [
            f"ff-{TRACE_ID}-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            f"00-{TRACE_ID}-0000000000000000-01",
            f"00-{TRACE_ID.upper()}-00F067AA0BA902B7-01",
            f"00-{TRACE_ID[:-2]}-00f067aa0ba902b7-01",
            "garbage",
        ],
    )
    def test_malformed_traceparent_starts_fresh_trace(self, service, receiver, traceparent: str) -> None:
        """A malformed traceparent starts a new trace, drops tracestate and logs no traceback."""
        base, app = service()

        response = httpx.get(f"{base}/hello", headers={"traceparent": traceparent, "tracestate": "vendor=abc"})

        assert response.status_code == 200
        server = _server(receiver, "/hello")
        assert server.trace_id != TRACE_ID
        assert server.parent_span_id == ""
        assert response.headers["x-request-id"] == server.trace_id
        app.wait_for_line("hello called")
        assert "Traceback" not in app.output()
        outbound = [s for s in receiver.spans if s.kind == "SERVER" and s.attributes.get("http.route") == "/pong" and s.trace_id == server.trace_id]
        assert outbound, "the new trace did not reach the downstream call"

    def test_untrusted_path_links_caller_trace(self, service, receiver) -> None:
        """On an untrusted path the caller's context becomes a link and a new trace starts."""
        base, _ = service(DTC_OTEL_UNTRUSTED_PATHS="/hello")

        httpx.get(f"{base}/hello", headers={"traceparent": VALID_PARENT})

        server = _server(receiver, "/hello")
        assert server.trace_id != TRACE_ID
        assert server.parent_span_id == ""
        assert server.links == [{"trace_id": TRACE_ID, "span_id": "00f067aa0ba902b7"}]


class TestRequestId:
    @pytest.mark.parametrize(
        "value",
        ["3f2504e0-4f89-41d3-9a0c-0305e82c3301", "0123456789abcdef0123456789abcdef", "Root=1-5759e988-bd862e3fe1be46a994272793", "req_2024.01:abc/42+x"],
    )
    def test_valid_request_id_logged_and_forwarded(self, service, receiver, partner, value: str) -> None:
        """A valid inbound ID is logged as request_id, set on the span and sent on outbound calls."""
        base, app = service()

        seen = httpx.get(f"{base}/echo-outbound", headers={"X-Request-ID": value}).json()

        assert seen["x-request-id"] == value
        server = _server(receiver, "/echo-outbound")
        assert server.attributes["request_id"] == value
        app.wait_for_line("GET /echo-outbound 200")
        access = next(r for r in app.json_lines() if r.get("http_path") == "/echo-outbound")
        assert access["request_id"] == value

    def test_correlation_id_header_accepted(self, service, receiver) -> None:
        """X-Correlation-ID is read as well as X-Request-ID."""
        base, _ = service()

        httpx.get(f"{base}/ping", headers={"X-Correlation-ID": "corr-123"})

        assert _server(receiver, "/ping").attributes["request_id"] == "corr-123"

    @pytest.mark.parametrize(
        ("value", "reason"),
        [("abc\tX-Injected", "control characters"), ("x" * 500, "longer than 128"), ("has space", "characters outside")],
    )
    def test_bad_request_id_replaced_without_echo(self, service, receiver, value: str, reason: str) -> None:
        """A request ID with control characters or over the limit is replaced; the warning omits it."""
        base, app = service()

        # httpx rejects some of these header values, so the raw bytes go over a socket.
        raw = asyncio.run(_raw_get(base, "/ping", {"X-Request-ID": value}))

        assert b"200 OK" in raw.split(b"\r\n", 1)[0]
        server = _server(receiver, "/ping")
        assert server.attributes["request_id"] == server.trace_id
        assert reason in server.attributes["dtc.request_id_replaced"]
        app.wait_for_line("inbound request ID replaced")
        assert "X-Injected" not in app.output()
        assert "xxxxxxxxxx" not in app.output()

    def test_crlf_in_scope_never_reaches_logs(self, receiver) -> None:
        """CR/LF in a request ID (possible behind other servers) is replaced; the raw value is not logged."""
        import logging

        from dtc_otel._starlette import ServerSpanMiddleware

        seen: dict[str, object] = {}

        async def app(scope, receive, send) -> None:
            from dtc_otel import current_request_id

            seen["request_id"] = current_request_id()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("dtc_otel").addHandler(handler)
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/x",
            "headers": [(b"x-request-id", b"abc\r\nSet-Cookie: evil=1")],
        }
        try:
            asyncio.run(ServerSpanMiddleware(app)(scope, receive, send))
        finally:
            logging.getLogger("dtc_otel").removeHandler(handler)

        assert seen["request_id"] is not None
        assert "\r" not in str(seen["request_id"])
        assert len(str(seen["request_id"])) == 32
        assert set(str(seen["request_id"])) != {"0"}, "replaced by an all-zero ID"
        assert records, "no warning about the replaced request ID"
        assert all("evil" not in record.getMessage() for record in records)
        assert sent[0]["status"] == 204

    def test_request_id_validation_rules(self) -> None:
        """Unit check of the accepted forms and the reasons given."""
        assert check_request_id("3f2504e0-4f89-41d3-9a0c-0305e82c3301") is None
        assert check_request_id("") == "empty"
        assert "control" in str(check_request_id("a\x00b"))
        assert "longer than 128" in str(check_request_id("a" * 129))


async def _raw_get(base: str, path: str, headers: dict[str, str]) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


class TestResponseHeaders:
    def test_unhandled_error_carries_correlation_headers(self, service, receiver) -> None:
        """An unhandled 500 still returns X-Request-ID and traceresponse with the trace ID."""
        base, _ = service()

        response = httpx.get(f"{base}/boom")

        server = _server(receiver, "/boom")
        assert response.status_code == 500
        assert response.headers["x-request-id"] == server.trace_id
        assert re.fullmatch(f"00-{server.trace_id}-{server.span_id}-0[0-3]", response.headers["traceresponse"])

    def test_uvicorn_error_line_keeps_request_id(self, service, receiver) -> None:
        """uvicorn's own traceback line for a failed request carries the caller's request ID."""
        base, app = service()

        httpx.get(f"{base}/boom", headers={"X-Request-ID": "support-ticket-500"})

        app.wait_for_line("Exception in ASGI application")
        line = next(r for r in app.json_lines() if str(r.get("event")).startswith("Exception in ASGI application"))
        assert line["request_id"] == "support-ticket-500"

    def test_validation_error_carries_correlation_headers(self, service) -> None:
        """A 422 validation error carries the correlation header."""
        base, _ = service()

        response = httpx.get(f"{base}/partner/not-a-number")

        assert response.status_code == 422
        assert len(response.headers["x-request-id"]) == 32

    def test_response_header_name_configurable(self, service) -> None:
        """DTC_OTEL_RESPONSE_ID_HEADER renames the correlation header."""
        base, _ = service(DTC_OTEL_RESPONSE_ID_HEADER="X-Trace-ID")

        response = httpx.get(f"{base}/pong")

        assert len(response.headers["x-trace-id"]) == 32
        assert "x-request-id" not in response.headers


class TestOutbound:
    def test_sync_and_async_calls_carry_headers(self, service, receiver) -> None:
        """httpx.get in a sync route and a shared AsyncClient both send traceparent and X-Request-ID."""
        base, _ = service()

        for path in ("/echo-outbound", "/echo-outbound-async"):
            seen = httpx.get(f"{base}{path}").json()
            server = _server(receiver, path)
            assert seen["traceparent"].split("-")[1] == server.trace_id
            assert seen["x-request-id"] == server.trace_id

    def test_unlisted_inbound_baggage_not_forwarded(self, service) -> None:
        """Inbound baggage keys outside DTC_OTEL_BAGGAGE_KEYS never reach outbound calls."""
        base, _ = service(DTC_OTEL_BAGGAGE_KEYS="tenant_id")

        seen = httpx.get(f"{base}/echo-outbound-async", headers={"baggage": "tenant_id=t9,secret=zzz"}).json()

        assert seen["baggage"] == "tenant_id=t9"

    def test_denied_host_gets_no_context(self, service) -> None:
        """DTC_OTEL_NO_PROPAGATE_HOSTS keeps traceparent and IDs from a named host."""
        base, _ = service(DTC_OTEL_NO_PROPAGATE_HOSTS="localhost")

        denied = httpx.get(f"{base}/echo-outbound-async", params={"host": "localhost"}).json()
        allowed = httpx.get(f"{base}/echo-outbound-async").json()

        assert "traceparent" not in denied
        assert "x-request-id" not in denied
        assert "traceparent" in allowed

    def test_allow_list_limits_propagation(self, service) -> None:
        """DTC_OTEL_PROPAGATE_HOSTS sends context only to matching hosts."""
        base, _ = service(DTC_OTEL_PROPAGATE_HOSTS="127.0.0.*")

        allowed = httpx.get(f"{base}/echo-outbound-async").json()
        denied = httpx.get(f"{base}/echo-outbound-async", params={"host": "localhost"}).json()

        assert "traceparent" in allowed
        assert "traceparent" not in denied


class TestPartnerRequestIds:
    def test_failed_call_logs_one_line_with_both_ids(self, service, receiver) -> None:
        """A 503 from the partner: one warning with partner, both IDs, status, path without query."""
        base, app = service(DTC_OTEL_PARTNERS="halo=127.0.0.*")

        httpx.get(f"{base}/partner/503")

        server = _server(receiver, "/partner/{status}")
        app.wait_for_line("partner call failed")
        lines = [r for r in app.json_lines() if r.get("event") == "partner call failed"]
        assert len(lines) == 1
        line = lines[0]
        assert line["partner"] == "halo"
        assert line["status"] == 503
        assert line["partner_request_id"].startswith("prt_")
        assert line["trace_id"] == server.trace_id
        assert line["method"] == "GET"
        assert line["path"] == "/status/503"
        assert line["quote_id"] == 44
        assert isinstance(line["duration_ms"], float)
        assert "secret-value" not in app.output()
        client = next(s for s in receiver.wait_for(lambda spans: any("dtc.partner.request_id" in s.attributes for s in spans)) if "dtc.partner.request_id" in s.attributes)
        assert client.attributes["dtc.partner.name"] == "halo"
        assert client.attributes["dtc.partner.request_id"] == line["partner_request_id"]
        assert client.attributes["quote_id"] == 44

    def test_success_logs_no_failure(self, service, receiver) -> None:
        """A 200 from the partner sets the span attributes and logs no failure line."""
        base, app = service()

        httpx.get(f"{base}/partner/200")

        _server(receiver, "/partner/{status}")
        assert "partner call failed" not in app.output()

    def test_transport_error_logs_error_type(self, service, receiver) -> None:
        """A connection error logs one line with the error type and the trace ID."""
        base, app = service()

        assert httpx.get(f"{base}/partner-down").json() == {"error": "ConnectError"}

        server = _server(receiver, "/partner-down")
        app.wait_for_line("partner call failed")
        line = next(r for r in app.json_lines() if r.get("event") == "partner call failed")
        assert line["error_type"] == "ConnectError"
        assert line["trace_id"] == server.trace_id
        assert "status" not in line

    def test_matcher_and_sanitising(self) -> None:
        """Host patterns map to names; control characters are removed and length capped."""
        matcher = PartnerMatcher([("halo", "*.halopsa.com")], ["request-id", "cf-ray"])

        assert matcher.name_for("acme.halopsa.com") == "halo"
        assert matcher.name_for("api.other.com") == "api.other.com"
        assert matcher.request_id(httpx.Headers({"CF-Ray": "8a1b"})) == "8a1b"
        assert matcher.request_id(None) is None
        assert sanitize_partner_value("ab\r\nc\x00d") == "abcd"
        assert len(sanitize_partner_value("x" * 1000)) == 128


class TestEntities:
    def test_binding_follows_work_and_stays_apart(self, service, receiver) -> None:
        """bind() reaches threads, tasks, background tasks and streams; concurrent requests never mix."""
        base, app = service(DTC_OTEL_BAGGAGE_KEYS="quote_id")

        async def fetch(quote_id: int) -> httpx.Response:
            async with httpx.AsyncClient() as client:
                return await client.get(f"{base}/entity/{quote_id}")

        async def run_all() -> list[httpx.Response]:
            return await asyncio.gather(*(fetch(quote_id) for quote_id in range(100, 120)))

        responses = asyncio.run(run_all())

        assert all(r.status_code == 200 for r in responses)
        for response in responses:
            quote_id = int(str(response.url).rsplit("/", 1)[1])
            assert f"quote_id={quote_id}" in response.headers["x-baggage-seen"]
        app.wait_for_line("entity in background")
        receiver.wait_for(lambda spans: sum(s.attributes.get("http.route") == "/entity/{quote_id}" for s in spans) == 20)
        trace_to_quote = {
            s.trace_id: s.attributes["quote_id"]
            for s in receiver.spans
            if s.kind == "SERVER" and s.attributes.get("http.route") == "/entity/{quote_id}"
        }
        entity_lines = [r for r in app.json_lines() if str(r.get("event", "")).startswith("entity ")]
        for kind in ("entity bound", "entity in thread", "entity in task", "entity in stream", "entity in background"):
            lines = [r for r in entity_lines if r["event"] == kind]
            assert len(lines) >= 20, f"{kind}: {len(lines)} lines"
            for line in lines:
                assert line["quote_id"] == trace_to_quote[line["trace_id"]], f"{kind} line mixed requests"
        clients = [s for s in receiver.spans if s.kind == "CLIENT" and s.trace_id in trace_to_quote]
        assert clients
        assert all(s.attributes["quote_id"] == trace_to_quote[s.trace_id] for s in clients)


def test_sqlcommenter_shows_trace_in_pg_stat_activity(service, receiver, database_url) -> None:
    """With DTC_OTEL_SQLCOMMENTER=true, a running statement carries the traceparent as a comment."""
    import psycopg

    base, _ = service(SVC_DATABASE_URL=database_url, DTC_OTEL_SQLCOMMENTER="true")
    seen: list[str] = []

    def watch() -> None:
        # Autocommit, because pg_stat_activity is a snapshot per transaction.
        with psycopg.connect(database_url, autocommit=True) as conn:
            for _ in range(100):
                rows = conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
                ).fetchall()
                if rows:
                    seen.extend(row[0] for row in rows)
                    return
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    httpx.get(f"{base}/slow-sql", timeout=10)
    watcher.join(10)

    server = _server(receiver, "/slow-sql")
    assert seen, "the slow statement never showed up in pg_stat_activity"
    assert any(f"traceparent='00-{server.trace_id}" in query for query in seen), json.dumps(seen)
