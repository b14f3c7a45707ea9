"""A minimal local OTLP/HTTP sink for the HTTP overhead benchmark.

It accepts ``POST /v1/traces``, reads the body, counts requests and bytes and
returns 200 with an empty body. It does no protobuf decoding while it runs, so
it takes little CPU away from the server under test. With ``--count-spans``
it keeps the bodies in memory and decodes them only after it receives SIGTERM
or SIGINT, to report how many spans arrived.

On start it prints one JSON line with the port it listens on. On SIGTERM or
SIGINT it prints one JSON line with the totals and exits.

Usage: python benchmarks/sink.py [--port 0] [--count-spans]
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

# Bodies kept for --count-spans. A 10 s run at a few thousand requests per
# second sends a few MB, so this cap is only a guard against a runaway run.
MAX_KEPT_BYTES = 512 * 1024 * 1024


class Totals:
    """Request and byte counts, shared by the handler threads."""

    def __init__(self, keep_bodies: bool) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.other_requests = 0
        self.keep_bodies = keep_bodies
        self.bodies: list[tuple[str, bytes]] = []
        self.kept_bytes = 0
        self.bodies_dropped = 0


class SinkHandler(BaseHTTPRequestHandler):
    """Accept OTLP/HTTP trace exports and respond 200 with an empty body."""

    # Keep-alive, as the OTLP exporter reuses its connection.
    protocol_version = "HTTP/1.1"
    totals: Totals

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path != "/v1/traces":
            with self.totals.lock:
                self.totals.other_requests += 1
            self._respond(404)
            return

        encoding = self.headers.get("Content-Encoding", "")
        with self.totals.lock:
            self.totals.requests += 1
            self.totals.bytes += len(body)
            if self.totals.keep_bodies:
                if self.totals.kept_bytes + len(body) <= MAX_KEPT_BYTES:
                    self.totals.bodies.append((encoding, body))
                    self.totals.kept_bytes += len(body)
                else:
                    self.totals.bodies_dropped += 1
        self._respond(200)

    def do_GET(self) -> None:
        with self.totals.lock:
            self.totals.other_requests += 1
        self._respond(404)

    def _respond(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        # One line per export would cost more CPU than the sink itself.
        pass


def count_spans(bodies: list[tuple[str, bytes]]) -> int:
    """Decode kept OTLP export bodies and return the number of spans in them."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = 0
    for encoding, body in bodies:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans += len(scope_spans.spans)

    return spans


def main() -> int:
    parser = argparse.ArgumentParser(description="Count OTLP/HTTP trace exports sent to 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: 0, a free port)")
    parser.add_argument(
        "--count-spans",
        action="store_true",
        help="keep the bodies and count their spans after SIGTERM or SIGINT, not while receiving",
    )
    options = parser.parse_args()

    totals = Totals(keep_bodies=options.count_spans)
    handler = type("BoundSinkHandler", (SinkHandler,), {"totals": totals})
    server = ThreadingHTTPServer(("127.0.0.1", options.port), handler)
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"listening": f"http://127.0.0.1:{server.server_port}"}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

    with totals.lock:
        result: dict[str, object] = {
            "requests": totals.requests,
            "bytes": totals.bytes,
            "other_requests": totals.other_requests,
        }
        bodies = list(totals.bodies)
        result["bodies_not_kept"] = totals.bodies_dropped
    if options.count_spans:
        try:
            result["spans"] = count_spans(bodies)
        except Exception as exc:  # noqa: BLE001 - the totals are still worth printing
            result["spans"] = None
            result["span_count_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result), flush=True)

    return 0


if __name__ == "__main__":
    sys.exit(main())
