"""The direct OTLP encoder produces what the SDK's encoder produces."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, set_span_in_context
from opentelemetry.trace.span import TraceState

from dtc_otel._otlp_encoder import encode_spans_to_bytes


def _spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "enc", "n": 3, "ratio": 0.5, "ok": True}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("enc.test", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0")
    other = provider.get_tracer("other")
    remote = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                         trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "abc")]))  # fmt: skip
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={
        "s": "text é", "i": -42, "big": 2**62, "f": 1.25, "b": False, "list": ["a", "b"], "ints": [1, 2, 3],
        "floats": [0.5], "bools": [True, False], "empty": "",
    }) as root:  # fmt: skip
        root.add_event("evt", {"k": "v", "n": 1})
        root.add_event("bare")
        root.set_status(Status(StatusCode.ERROR, "went wrong"))
        with other.start_as_current_span("child", kind=SpanKind.CLIENT, links=[Link(remote, {"why": "caller"})]):
            pass
    with tracer.start_as_current_span("remote-child", context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.CONSUMER):
        pass
    with tracer.start_as_current_span("ok") as span:
        span.set_status(Status(StatusCode.OK))
    return exporter.get_finished_spans()


def test_encoding_matches_sdk_encoder() -> None:
    """Decoded, the direct encoding equals the SDK's message for a varied set of spans."""
    spans = _spans()
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(encode_spans_to_bytes(spans))

    assert ours == encode_spans(spans)


def test_encoding_repeats_with_cache() -> None:
    """A second batch with the same resource and scope encodes the same way."""
    spans = _spans()
    first = encode_spans_to_bytes(spans)

    assert encode_spans_to_bytes(spans) == first


def test_empty_batch() -> None:
    """No spans encode to an empty request."""
    assert encode_spans_to_bytes([]) == b""


def test_dropped_counts_match_sdk_encoder() -> None:
    """Spans over the attribute, event and link limits carry the same dropped counts as the SDK's encoding."""
    from opentelemetry.sdk.trace import SpanLimits

    exporter = InMemorySpanExporter()
    limits = SpanLimits(max_span_attributes=1, max_events=0, max_links=0)
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    remote = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True)
    with provider.get_tracer("limits").start_as_current_span("over", attributes={"a": 1, "b": 2}, links=[Link(remote)]) as span:
        span.add_event("dropped")
        span.set_attribute("port", 8080)
    spans = exporter.get_finished_spans()
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(encode_spans_to_bytes(spans))

    assert ours == encode_spans(spans)
    decoded = ours.resource_spans[0].scope_spans[0].spans[0]
    assert (decoded.dropped_attributes_count, decoded.dropped_events_count, decoded.dropped_links_count) == (2, 1, 1)
