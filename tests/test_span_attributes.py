"""Server span attributes set without the SDK's cleaning equal those set through it."""

from __future__ import annotations

import asyncio

import httpx
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dtc_otel._config import Settings
from dtc_otel._span_attributes import DirectAttributes
from dtc_otel._starlette import ServerSpanMiddleware

EXPECTED = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "url.path": "/quotes/44",
    "network.protocol.version": "1.1",
    "server.address": "portal.test",
    "server.port": 8080,
    "client.address": "127.0.0.1",
    "user_agent.original": "attribute-test",
    "http.route": "/quotes/{quote_id}",
    "http.response.status_code": 200,
}


class AttributeReader(SpanProcessor):
    """A span processor that reads attributes when a span starts, as a filtering processor might."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_start(self, span, parent_context=None) -> None:
        self.seen.append(dict(span.attributes))


class PathSampler(Sampler):
    """A sampler that decides by an attribute, so it must receive them."""

    def __init__(self) -> None:
        self.paths: list[object] = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        self.paths.append((attributes or {}).get("url.path"))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "PathSampler"


async def _quote(request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _serve(provider: TracerProvider) -> tuple[InMemorySpanExporter, ServerSpanMiddleware]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Starlette(routes=[Route("/quotes/{quote_id}", _quote)])
    middleware = ServerSpanMiddleware(app.router, tracer_provider=provider, settings=Settings())

    async def call() -> None:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://portal.test:8080") as client:
            response = await client.get("/quotes/44", headers={"user-agent": "attribute-test"})
            assert response.status_code == 200

    asyncio.run(call())

    return exporter, middleware


def test_direct_attributes_match_sdk_path() -> None:
    """With the default sampler, attributes skip cleaning and arrive complete."""
    exporter, middleware = _serve(TracerProvider())

    assert middleware._direct.usable()
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes) == EXPECTED
    assert span.name == "GET /quotes/{quote_id}"


def test_ratio_sampler_keeps_direct_path() -> None:
    """A trace-ID ratio sampler ignores attributes, so the direct path stays on."""
    exporter, middleware = _serve(TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0))))

    assert middleware._direct.usable()
    assert dict(exporter.get_finished_spans()[0].attributes) == EXPECTED


def test_attribute_sampler_receives_attributes() -> None:
    """A sampler that reads attributes gets them at start, through the SDK path."""
    sampler = PathSampler()
    exporter, middleware = _serve(TracerProvider(sampler=sampler))

    assert not middleware._direct.usable()
    assert sampler.paths == ["/quotes/44"]
    assert dict(exporter.get_finished_spans()[0].attributes) == EXPECTED


def test_reading_processor_sees_attributes() -> None:
    """A span processor that reads attributes in on_start gets them all."""
    provider = TracerProvider()
    reader = AttributeReader()
    provider.add_span_processor(reader)
    exporter, middleware = _serve(provider)

    assert not middleware._direct.usable()
    assert reader.seen[0]["url.path"] == "/quotes/44"
    assert reader.seen[0]["server.port"] == 8080
    assert dict(exporter.get_finished_spans()[0].attributes) == EXPECTED


def test_processor_added_later_is_noticed() -> None:
    """Adding a reading processor after the first request turns the direct path off."""
    provider = TracerProvider(sampler=ALWAYS_ON)
    direct = DirectAttributes(provider.get_tracer("attribute-test"))
    assert direct.usable()

    provider.add_span_processor(AttributeReader())

    assert not direct.usable()


def test_span_limits_still_apply() -> None:
    """Attribute count and length limits are applied as the SDK applies them."""
    exporter, _ = _serve(TracerProvider(span_limits=SpanLimits(max_span_attributes=3, max_span_attribute_length=4)))

    (span,) = exporter.get_finished_spans()
    assert len(span.attributes) == 3
    assert span.dropped_attributes == len(EXPECTED) - 3
    assert all(len(value) <= 4 for value in span.attributes.values() if isinstance(value, str))
