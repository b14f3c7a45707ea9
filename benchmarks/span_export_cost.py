"""Time the tracing SDK's per-span work outside any server.

Three steps are timed for a span shaped like dtc-otel's server span (ten
attributes, kind SERVER, renamed and given a route and status at the end):

- ``start_and_end``: ``start_span``, four updates and ``end``, with one span
  processor that only collects the ended spans;
- ``encode``: ``encode_spans`` of the OTLP exporter, which builds the protobuf
  message for a batch of 512 spans (the batch processor's default batch
  size), and ``SerializeToString``;
- ``export``: ``OTLPSpanExporter.export`` of one batch to ``benchmarks/sink.py``
  on 127.0.0.1, started and stopped by this script.

Each step runs ``--repeats`` times and the median is reported, in
microseconds per span.

Usage: python benchmarks/span_export_cost.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
SINK_SCRIPT = HERE / "sink.py"
BATCH_SIZE = 512
SINK_STOP_TIMEOUT_S = 10.0

# The attributes ServerSpanMiddleware sets at span start for GET /items/42.
START_ATTRIBUTES = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "url.path": "/items/42",
    "network.protocol.version": "1.1",
    "server.address": "127.0.0.1",
    "server.port": 43210,
    "client.address": "127.0.0.1",
    "user_agent.original": "wrk",
}


class CollectingExporter(SpanExporter):
    """Keep every ended span in memory."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def time_start_and_end(repeats: int) -> tuple[float, list[ReadableSpan]]:
    """Return the median microseconds per span for start, updates and end, and one batch of ended spans."""
    collector = CollectingExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "benchmark-app", "telemetry.distro.name": "dtc-otel"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(collector))
    tracer = provider.get_tracer("dtc_otel.starlette")

    samples = []
    for _ in range(repeats):
        collector.spans.clear()
        start = time.perf_counter()
        for _ in range(BATCH_SIZE):
            span = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=START_ATTRIBUTES)
            span.set_attribute("http.route", "/items/{item_id}")
            span.update_name("GET /items/{item_id}")
            span.set_attribute("http.response.status_code", 200)
            span.end()
        samples.append((time.perf_counter() - start) / BATCH_SIZE * 1e6)

    return statistics.median(samples), list(collector.spans)


def time_encode(batch: list[ReadableSpan], repeats: int) -> dict[str, float]:
    encode_samples = []
    serialize_samples = []
    body = b""
    for _ in range(repeats):
        start = time.perf_counter()
        message = encode_spans(batch)
        encoded = time.perf_counter()
        body = message.SerializeToString()
        serialized = time.perf_counter()
        encode_samples.append((encoded - start) / len(batch) * 1e6)
        serialize_samples.append((serialized - encoded) / len(batch) * 1e6)

    return {
        "encode_us_per_span": statistics.median(encode_samples),
        "serialize_us_per_span": statistics.median(serialize_samples),
        "bytes_per_span": len(body) / len(batch),
    }


def time_export(batch: list[ReadableSpan], repeats: int) -> dict[str, Any]:
    sink = subprocess.Popen(
        [sys.executable, str(SINK_SCRIPT), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None
        line = sink.stdout.readline()
        if not line:
            raise RuntimeError("the OTLP sink exited before it started listening")
        endpoint = json.loads(line)["listening"]
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")

        wall_samples = []
        cpu_samples = []
        for _ in range(repeats):
            wall_start = time.perf_counter()
            cpu_start = time.thread_time()
            result = exporter.export(batch)
            cpu_samples.append((time.thread_time() - cpu_start) / len(batch) * 1e6)
            wall_samples.append((time.perf_counter() - wall_start) / len(batch) * 1e6)
            if result is not SpanExportResult.SUCCESS:
                raise RuntimeError(f"export to the sink at {endpoint} failed: {result}")
        exporter.shutdown()
    finally:
        if sink.poll() is None:
            os.kill(sink.pid, signal.SIGTERM)
        try:
            sink_output, _ = sink.communicate(timeout=SINK_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(sink.pid, signal.SIGKILL)
            sink_output, _ = sink.communicate()

    totals = [line for line in sink_output.splitlines() if line.strip()]

    return {
        "export_wall_us_per_span": statistics.median(wall_samples),
        "export_thread_cpu_us_per_span": statistics.median(cpu_samples),
        "sink": json.loads(totals[-1]) if totals else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time span start/end, OTLP encoding and OTLP/HTTP export per span.")
    parser.add_argument("--repeats", type=int, default=20, help="batches of 512 spans per step (default: 20)")
    parser.add_argument("--output", type=Path, help="JSON result file (default: benchmarks/results/span_export_cost-<UTC time>.json)")
    options = parser.parse_args(argv)
    if not 3 <= options.repeats <= 1000:
        parser.error(f"--repeats must be between 3 and 1000, got {options.repeats}")

    start_and_end_us, batch = time_start_and_end(options.repeats)
    batch = batch[:BATCH_SIZE]
    results: dict[str, Any] = {"start_and_end_us_per_span": start_and_end_us}
    results.update(time_encode(batch, options.repeats))
    results.update(time_export(batch, options.repeats))

    print(f"start_span + 4 updates + end:       {results['start_and_end_us_per_span']:6.1f} us per span")
    print(f"encode_spans ({BATCH_SIZE}-span batch):       {results['encode_us_per_span']:6.1f} us per span")
    print(f"SerializeToString:                  {results['serialize_us_per_span']:6.2f} us per span")
    print(f"OTLP/HTTP export to the local sink: {results['export_wall_us_per_span']:6.1f} us per span wall, "
          f"{results['export_thread_cpu_us_per_span']:.1f} us CPU of the exporting thread")
    print(f"batch of {BATCH_SIZE}: {results['encode_us_per_span'] * BATCH_SIZE / 1000:.1f} ms to encode, "
          f"{results['bytes_per_span'] * BATCH_SIZE / 1e6:.2f} MB")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    output = options.output or RESULTS_DIR / f"span_export_cost-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started_utc": stamp,
        "options": {"repeats": options.repeats, "batch_size": BATCH_SIZE},
        "packages": {
            name: metadata.version(name)
            for name in ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "protobuf")
        },
        "results": results,
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {output}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
