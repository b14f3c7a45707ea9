"""Export failures never hurt the app: collector down, collector back, SIGTERM."""

from __future__ import annotations

import signal
import time

import httpx

from dtc_otel._receiver import OTLPReceiver
from tests.conftest import free_port, wait_http


def test_collector_down_requests_succeed_and_warnings_are_few(launch) -> None:
    """With nothing listening on the OTLP port, every request succeeds and warnings stay rate-limited."""
    port = free_port()
    app = launch(
        ["python", "svc.py"],
        PORT=str(port),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    wait_http(f"http://127.0.0.1:{port}/pong")

    statuses = [httpx.get(f"http://127.0.0.1:{port}/hello", timeout=5).status_code for _ in range(60)]
    time.sleep(2.0)

    assert statuses == [200] * 60
    output = app.output()
    assert "Traceback" not in output
    export_lines = [line for line in app.lines if "export" in line.lower() and "hello" not in line]
    assert 1 <= len(export_lines) <= 6, "\n".join(export_lines)


def test_export_resumes_when_collector_returns(launch) -> None:
    """Spans made while the collector was down are not needed, but later ones arrive once it is back."""
    otlp_port = free_port()
    port = free_port()
    app = launch(
        ["python", "svc.py"],
        PORT=str(port),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    wait_http(f"http://127.0.0.1:{port}/pong")
    httpx.get(f"http://127.0.0.1:{port}/pong")
    time.sleep(1.5)

    with OTLPReceiver(otlp_port) as collector:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            s.attributes.get("http.route") == "/hello" for s in collector.spans
        ):
            httpx.get(f"http://127.0.0.1:{port}/hello")
            time.sleep(0.5)

        assert any(s.attributes.get("http.route") == "/hello" for s in collector.spans)
    app.wait_for_line("span export resumed")


def test_sigterm_with_collector_down_exits_in_bounded_time(launch) -> None:
    """SIGTERM with the collector unreachable: the process exits within the shutdown timeout plus slack."""
    port = free_port()
    app = launch(
        ["python", "svc.py"],
        PORT=str(port),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_BSP_SCHEDULE_DELAY="60000",
        DTC_OTEL_SHUTDOWN_TIMEOUT="2",
    )
    wait_http(f"http://127.0.0.1:{port}/pong")
    httpx.get(f"http://127.0.0.1:{port}/hello")

    started = time.monotonic()
    app.signal(signal.SIGTERM)
    app.process.wait(20)
    elapsed = time.monotonic() - started

    # 2 s of flush budget plus uvicorn's own graceful shutdown; the
    # exporter's default timeout alone would be 10 s.
    assert elapsed < 8, f"exit took {elapsed:.1f} s"


def test_sigterm_flushes_last_request(launch, receiver) -> None:
    """The spans of a request served just before SIGTERM are exported during shutdown."""
    port = free_port()
    app = launch(["python", "svc.py"], PORT=str(port), OTEL_BSP_SCHEDULE_DELAY="60000")
    wait_http(f"http://127.0.0.1:{port}/pong")

    httpx.get(f"http://127.0.0.1:{port}/hello")
    assert not any(s.attributes.get("http.route") == "/hello" for s in receiver.spans)
    app.signal(signal.SIGTERM)
    app.process.wait(20)

    assert any(s.attributes.get("http.route") == "/hello" for s in receiver.spans)


def test_exit_without_collector_skips_full_wait(launch) -> None:
    """A short-lived program with no collector listening exits without spending the flush budget."""
    app = launch(
        ["python", "-c", "from opentelemetry import trace\nwith trace.get_tracer('t').start_as_current_span('short'): pass"],
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        DTC_OTEL_SHUTDOWN_TIMEOUT="30",
    )

    started = time.monotonic()
    app.process.wait(40)

    assert time.monotonic() - started < 10


def test_sigterm_with_failing_export_skips_full_wait(launch) -> None:
    """Once exports are failing, shutdown does not spend the whole timeout on a dead collector."""
    port = free_port()
    app = launch(
        ["python", "svc.py"],
        PORT=str(port),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        DTC_OTEL_SHUTDOWN_TIMEOUT="30",
    )
    wait_http(f"http://127.0.0.1:{port}/pong")
    httpx.get(f"http://127.0.0.1:{port}/hello")
    app.wait_for_line("span export failing", timeout=20)
    httpx.get(f"http://127.0.0.1:{port}/hello")

    started = time.monotonic()
    app.signal(signal.SIGTERM)
    app.process.wait(40)
    elapsed = time.monotonic() - started

    assert elapsed < 10, f"exit took {elapsed:.1f} s with a 30 s budget"


def test_export_transport_choice(monkeypatch, tmp_path) -> None:
    """urllib3 carries the export, except where a proxy, CA bundle or netrc setting needs requests."""
    from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
    from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport

    from dtc_otel._export import _REQUESTS_ENVIRONMENT, _export_transport

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in _REQUESTS_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert type(_export_transport({})) is Urllib3HTTPTransport

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    transport = _export_transport({})
    assert type(transport) is RequestsHTTPTransport
    assert transport._session.trust_env is True

    monkeypatch.delenv("HTTPS_PROXY")
    (tmp_path / ".netrc").write_text("machine collector login user password fake\n")
    assert type(_export_transport({})) is RequestsHTTPTransport


def test_export_transport_keeps_certificate_settings(monkeypatch, tmp_path) -> None:
    """The CA file and client certificate settings reach the transport as upstream resolves them."""
    from dtc_otel._export import _REQUESTS_ENVIRONMENT, _tls_options

    for name in (*_REQUESTS_ENVIRONMENT, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert _tls_options({}) == (True, None)

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", str(tmp_path / "client.pem"))
    assert _tls_options({}) == (str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"))

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(tmp_path / "client.key"))
    assert _tls_options({"certificate_file": "given.pem"}) == (
        "given.pem",
        (str(tmp_path / "client.pem"), str(tmp_path / "client.key")),
    )
