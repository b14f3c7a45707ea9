"""A small OTLP/HTTP trace receiver, for tests and for ``dtc-otel receive``.

It decodes the protobuf ``ExportTraceServiceRequest`` bodies the SDK sends to
``/v1/traces`` into :class:`ReceivedSpan` records. It is a debugging aid, not
a collector: spans are kept in memory only.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OTLPReceiver", "ReceivedSpan", "decode_request"]

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector would see it, with hex IDs."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    if kind is None:
        return None

    return getattr(value, kind)


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """Decode one ``ExportTraceServiceRequest`` protobuf body into spans."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)

    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=_KINDS.get(span.kind, str(span.kind)),
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        resource=resource,
                        status_code=span.status.code,
                        events=[
                            {"name": event.name, **{kv.key: _value(kv.value) for kv in event.attributes}}
                            for event in span.events
                        ],
                        links=[
                            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                            for link in span.links
                        ],
                    )
                )

    return spans


class OTLPReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1, running in a background thread.

    **Parameters:**

    * **port** - the TCP port; 0 picks a free one (see :attr:`endpoint`).
    * **on_spans** - called with each batch of decoded spans, on the server thread.
    * **keep** - keep every span and request body in memory for :meth:`wait_for`; a
      long-running printer such as ``dtc-otel receive`` turns this off.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        on_spans: Callable[[list[ReceivedSpan]], None] | None = None,
        keep: bool = True,
    ) -> None:
        self._keep = keep
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        # The decoded request bodies as received, for checks on the exact bytes exported.
        self.bodies: list[bytes] = []
        # Set to an HTTP status such as 503 to make every export fail.
        self.fail_with: int | None = None
        self._on_spans = on_spans
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL to use as ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if receiver.fail_with is not None:
                    self.send_response(receiver.fail_with)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return

                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                spans = decode_request(body)
                if receiver._keep:
                    receiver.bodies.append(body)
                receiver._add(spans)

                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._cond:
            self.requests += 1
            if self._keep:
                self.spans.extend(spans)
            self._cond.notify_all()
        if self._on_spans is not None:
            self._on_spans(spans)

    def start(self) -> OTLPReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Wait until *predicate* holds for the spans received so far; return them.

        Raises:
            TimeoutError: the predicate still fails after *timeout* seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({span.name for span in self.spans})
                    raise TimeoutError(
                        f"spans did not arrive within {timeout} s; received {len(self.spans)}: {names}"
                    )
                self._cond.wait(remaining)

            return list(self.spans)
