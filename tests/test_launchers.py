"""dtc-otel-run instruments an unmodified FastAPI app under every common launcher."""

from __future__ import annotations

import collections
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from dtc_otel._receiver import OTLPReceiver, ReceivedSpan
from tests.conftest import APPS, free_port, wait_http

HEX32 = "0123456789abcdef"


def _server_span(spans: list[ReceivedSpan], route: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == "SERVER" and s.attributes.get("http.route") == route]


def _check_request_trace(receiver: OTLPReceiver, launched, *, with_database: bool) -> ReceivedSpan:
    """Check the core promise for one /hello request: logs and spans share one trace."""
    spans = receiver.wait_for(
        lambda spans: _server_span(spans, "/hello") and len(_server_span(spans, "/pong")) >= 1
        and (not with_database or any(s.attributes.get("db.system") == "postgresql" or s.attributes.get("db.system.name") == "postgresql" for s in spans))
    )
    server = _server_span(spans, "/hello")[0]
    launched.wait_for_line("library line inside the request")
    lines = launched.json_lines()

    hello_lines = [line for line in lines if line.get("event") == "hello called"]
    assert len(hello_lines) == 1, f"expected the app's line once, got {hello_lines}"
    assert hello_lines[0]["trace_id"] == server.trace_id
    assert len(hello_lines[0]["span_id"]) == 16
    assert set(hello_lines[0]["trace_id"]) <= set(HEX32)
    assert hello_lines[0]["quote_id"] == 44

    library = [line for line in lines if line.get("event") == "library line inside the request"]
    assert len(library) == 1, f"stdlib line printed {len(library)} times"
    assert library[0]["trace_id"] == server.trace_id

    clients = [s for s in spans if s.kind == "CLIENT" and s.trace_id == server.trace_id and s.parent_span_id == server.span_id]
    http_clients = [s for s in clients if "http.request.method" in s.attributes]
    assert http_clients, f"no httpx client span below the server span; got {[(s.name, s.kind) for s in spans]}"
    if with_database:
        queries = [s for s in clients if "db.statement" in s.attributes or "db.query.text" in s.attributes]
        assert queries, "no psycopg span below the server span"
        statement = queries[0].attributes.get("db.statement") or queries[0].attributes.get("db.query.text")
        assert "SELECT" in statement
        parameters = [key for key in queries[0].attributes if "parameter" in key]
        assert not parameters, f"parameter values were exported: {parameters}"

    access = [line for line in lines if line.get("logger") == "uvicorn.access" and line.get("http_path") == "/hello"]
    assert access, "uvicorn's access line did not go through the shared chain"
    assert access[0]["trace_id"] == server.trace_id

    outside = [line for line in lines if "Application startup complete" in str(line.get("event"))]
    assert outside, "uvicorn's startup line is missing from the JSON output"
    assert "trace_id" not in outside[0], "a line outside any span carries a trace_id"

    return server


def test_python_script_exports_correlated_trace(launch, receiver, database_url) -> None:
    """`python app.py`: the log line's trace_id is the server span's, httpx and psycopg spans are its children."""
    port = free_port()
    app = launch(["python", "svc.py"], PORT=str(port), SVC_DATABASE_URL=database_url)
    wait_http(f"http://127.0.0.1:{port}/pong")

    assert httpx.get(f"http://127.0.0.1:{port}/hello").json()["row"] == 42

    server = _check_request_trace(receiver, app, with_database=True)
    assert server.resource["service.name"] == "svc"
    assert server.name == "GET /hello"
    assert server.attributes["http.response.status_code"] == 200


def test_uvicorn_module_exports_correlated_trace(launch, receiver, database_url) -> None:
    """`uvicorn mod:app`: same correlation as a script."""
    port = free_port()
    app = launch(["uvicorn", "svc:app", "--port", str(port)], SVC_DATABASE_URL=database_url)
    wait_http(f"http://127.0.0.1:{port}/pong")

    httpx.get(f"http://127.0.0.1:{port}/hello")

    _check_request_trace(receiver, app, with_database=True)


def _instances(spans: list[ReceivedSpan]) -> collections.Counter:
    return collections.Counter(s.resource.get("service.instance.id") for s in spans if s.kind == "SERVER")


def _assert_no_duplicates(spans: list[ReceivedSpan]) -> None:
    counts = collections.Counter(s.span_id for s in spans)
    duplicated = [span_id for span_id, count in counts.items() if count > 1]
    assert not duplicated, f"{len(duplicated)} spans were exported more than once"


def _hit_until_two_workers(port: int, receiver: OTLPReceiver) -> None:
    pids = set()
    for _ in range(400):
        pids.add(httpx.get(f"http://127.0.0.1:{port}/hello", timeout=5).json()["pid"])
        if len(pids) >= 2:
            break
    assert len(pids) == 2, f"requests reached {len(pids)} worker(s), expected 2"
    receiver.wait_for(lambda spans: len(_instances(spans)) >= 2, timeout=15)


def test_uvicorn_workers_each_export_their_own_spans(launch, receiver) -> None:
    """`uvicorn --workers 2`: each worker exports with its own service.instance.id, nothing twice."""
    port = free_port()
    app = launch(["uvicorn", "svc:app", "--port", str(port), "--workers", "2"])
    wait_http(f"http://127.0.0.1:{port}/pong")

    _hit_until_two_workers(port, receiver)
    app.stop()

    spans = receiver.spans
    assert len(_instances(spans)) == 2
    _assert_no_duplicates(spans)
    hello_servers = _server_span(spans, "/hello")
    pids = {s.resource["process.pid"] for s in hello_servers}
    assert len(pids) == 2


def test_gunicorn_preload_workers_export_distinct_instances(launch, receiver) -> None:
    """`gunicorn --preload -w 2`: forked workers get fresh instance IDs and export once each."""
    port = free_port()
    app = launch(
        ["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2", "--preload", "-b", f"127.0.0.1:{port}", "svc:app"]
    )
    wait_http(f"http://127.0.0.1:{port}/pong")

    _hit_until_two_workers(port, receiver)
    app.stop()

    spans = receiver.spans
    instances = _instances(spans)
    assert len(instances) == 2, f"expected 2 instance IDs, got {dict(instances)}"
    _assert_no_duplicates(spans)
    for span in _server_span(spans, "/hello"):
        line = [r for r in app.json_lines() if r.get("trace_id") == span.trace_id and r.get("event") == "hello called"]
        assert len(line) == 1


def test_uvicorn_reload_keeps_tracing_after_reload(launch, receiver, tmp_path: Path) -> None:
    """`uvicorn --reload`: the process started by a reload is instrumented too."""
    shutil.copy(APPS / "svc.py", tmp_path / "svc.py")
    port = free_port()
    app = launch(["uvicorn", "svc:app", "--port", str(port), "--reload", "--reload-dir", str(tmp_path)], cwd=tmp_path)
    wait_http(f"http://127.0.0.1:{port}/pong")
    httpx.get(f"http://127.0.0.1:{port}/hello")
    receiver.wait_for(lambda spans: len(_server_span(spans, "/hello")) == 1)

    source = tmp_path / "svc.py"
    source.write_text(source.read_text() + "\n# changed to trigger a reload\n")
    app.wait_for_line("Application startup complete", timeout=20)
    deadline = time.monotonic() + 20
    while app.output().count("Application startup complete") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.output().count("Application startup complete") >= 2, app.output()
    wait_http(f"http://127.0.0.1:{port}/pong")

    httpx.get(f"http://127.0.0.1:{port}/hello")

    spans = receiver.wait_for(lambda spans: len(_server_span(spans, "/hello")) == 2)
    instances = {s.resource["service.instance.id"] for s in _server_span(spans, "/hello")}
    assert len(instances) == 2, "the reloaded process reused the old instance ID"
    after = _server_span(spans, "/hello")[1]
    lines = [r for r in app.json_lines() if r.get("event") == "hello called"]
    assert lines[-1]["trace_id"] == after.trace_id
