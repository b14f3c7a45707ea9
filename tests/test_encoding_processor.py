"""Spans masked and encoded as they end reach the collector as the SDK would send them."""

from __future__ import annotations

import logging

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from dtc_otel import _otlp_encoder
from dtc_otel._encoding_processor import EncodingSpanProcessor
from dtc_otel._export import GuardedExporter, _fast_http_exporter_class


def _provider(receiver) -> tuple[TracerProvider, GuardedExporter]:
    exporter_class = _fast_http_exporter_class()
    exporter = GuardedExporter(lambda: exporter_class(endpoint=f"{receiver.endpoint}/v1/traces"), "otlp")
    assert exporter.accepts_encoded_spans
    provider = TracerProvider(resource=Resource.create({"service.name": "encoding-test"}))
    provider.add_span_processor(EncodingSpanProcessor(exporter))

    return provider, exporter


def test_encoded_spans_arrive_masked(receiver) -> None:
    """Encoded at span end, IDs, parent, attributes, events and status arrive, with a secret masked first."""
    provider, _ = _provider(receiver)
    tracer = provider.get_tracer("encoding.test")
    with tracer.start_as_current_span("outer", kind=SpanKind.SERVER, attributes={"quote_id": 44}) as outer:
        with tracer.start_as_current_span("inner", attributes={"authorization": "Bearer abc.def.ghi"}) as inner:
            inner.add_event("retry attempt", {"attempt": 2})
            inner.set_status(Status(StatusCode.ERROR, "partner answered 502"))
    provider.force_flush()

    spans = {span.name: span for span in receiver.wait_for(lambda got: len(got) >= 2)}
    assert spans["outer"].span_id == format(outer.get_span_context().span_id, "016x")
    assert spans["outer"].attributes == {"quote_id": 44}
    assert spans["outer"].resource["service.name"] == "encoding-test"
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    assert spans["inner"].trace_id == format(inner.get_span_context().trace_id, "032x")
    assert spans["inner"].attributes["authorization"] == "[REDACTED]"
    assert spans["inner"].events == [{"name": "retry attempt", "attempt": 2}]
    assert spans["inner"].status_code == StatusCode.ERROR.value
    provider.shutdown()


def test_unsampled_span_not_sent(receiver) -> None:
    """A span the sampler dropped costs no encoding and never reaches the collector."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter_class = _fast_http_exporter_class()
    exporter = GuardedExporter(lambda: exporter_class(endpoint=f"{receiver.endpoint}/v1/traces"), "otlp")
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(EncodingSpanProcessor(exporter))
    with provider.get_tracer("encoding.test").start_as_current_span("dropped"):
        pass
    provider.force_flush()

    assert receiver.spans == []
    provider.shutdown()


def test_encoding_failure_falls_back(receiver, monkeypatch, caplog) -> None:
    """When encoding at span end fails, the span still arrives, encoded on the export thread."""
    provider, _ = _provider(receiver)
    calls = {"count": 0}
    real = _otlp_encoder.EncodedSpan.__init__

    def fail_once(self, span):
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("encoder broke")
        real(self, span)

    monkeypatch.setattr(_otlp_encoder.EncodedSpan, "__init__", fail_once)
    with caplog.at_level(logging.WARNING, logger="dtc_otel.export"):
        with provider.get_tracer("encoding.test").start_as_current_span("first"):
            pass
        with provider.get_tracer("encoding.test").start_as_current_span("second"):
            pass
    provider.force_flush()

    names = sorted(span.name for span in receiver.wait_for(lambda got: len(got) >= 2))
    assert names == ["first", "second"]
    assert "span encoding at span end failed" in caplog.text
    provider.shutdown()


def _secret_spans():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Link, SpanContext

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("masking.test")
    caller = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True)
    attributes = {
        "http.request.header.authorization": ["Bearer abc.def.ghi"],
        "api_key": 123456,
        "url.full": "https://partner.test/pay?token=sk_live_51Habcdefghijklmnopqrstuv",
        "quote_id": 44,
        "plain": "nothing secret here",
    }
    with tracer.start_as_current_span("call", attributes=attributes, links=[Link(caller, {"password": "hunter2"})]) as span:
        span.add_event("retry attempt", {"error": "card 4111 1111 1111 1111 declined", "attempt": 2})
        span.set_status(Status(StatusCode.ERROR, "token sk_live_51Habcdefghijklmnopqrstuv rejected"))

    return exporter.get_finished_spans()


def test_masked_encoding_equals_redacted_spans() -> None:
    """Masking while encoding gives the same bytes as redacting the span, then encoding it."""
    from dtc_otel._otlp_encoder import encode_span, encode_spans_to_bytes
    from dtc_otel._span_redaction import SpanMasker, redact_spans

    spans = _secret_spans()
    masker = SpanMasker()
    expected = encode_spans_to_bytes(redact_spans(spans))

    assert encode_spans_to_bytes([encode_span(span, masker) for span in spans]) == expected
    # A second pass reads from the masker's cache and must give the same bytes.
    assert encode_spans_to_bytes([encode_span(span, masker) for span in spans]) == expected
    assert b"hunter2" not in expected
    assert b"4111 1111" not in expected
    assert b"sk_live_51H" not in expected


def test_new_default_redactor_drops_cache() -> None:
    """After set_default_redactor, cached masking results of the old redactor are not reused."""
    from dtc_otel import _redaction
    from dtc_otel._otlp_encoder import encode_span, encode_spans_to_bytes
    from dtc_otel._span_redaction import SpanMasker

    original = _redaction.default_redactor()
    spans = _secret_spans()
    masker = SpanMasker()
    assert b"nothing secret here" in encode_spans_to_bytes([encode_span(span, masker) for span in spans])

    _redaction.set_default_redactor(_redaction.Redactor(extra_keys=["plain"]))
    try:
        encoded = encode_spans_to_bytes([encode_span(span, masker) for span in spans])
    finally:
        _redaction.set_default_redactor(original)

    assert b"nothing secret here" not in encoded
