"""A lean server span for every Starlette and FastAPI request.

Upstream's ASGI middleware opens three spans per request (the request plus one
per ``http.send`` message), computes metrics and cleans attributes on every
call, which measured here cost about 250-300 us of CPU per request. This
middleware opens one span, sets the stable HTTP semantic-convention
attributes, and does no per-message work, so streaming responses cost the same
as plain ones. docs/benchmarks.md has the numbers.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

import structlog
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    get_custom_header_attributes,
    get_custom_headers,
    normalise_request_header_name,
    normalise_response_header_name,
)

from dtc_otel._config import Settings
from dtc_otel._entities import bind_for_request, reset_request_entities
from dtc_otel._logs import remember_ids
from dtc_otel._partners import sanitize_partner_value
from dtc_otel._ratelimit import log_once_per_interval
from dtc_otel._request_id import check_request_id, request_id_var
from dtc_otel._setup import current_settings
from dtc_otel._span_attributes import DirectAttributes, put_attributes

__all__ = ["ServerSpanMiddleware", "StarletteServerInstrumentor"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_logger = logging.getLogger("dtc_otel.starlette")

# The scope key that marks a request as already traced, so a mounted
# sub-application does not open a second server span.
SCOPE_SPAN_KEY = "dtc_otel.span"

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


class ServerSpanMiddleware:
    """ASGI middleware that opens one ``SERVER`` span per HTTP request.

    The span is current while the app runs, so every log line, outbound call
    and database query of the request joins its trace. An exception from the
    app is recorded on the span and then re-raised unchanged. Every response,
    error pages included, carries the trace ID in the correlation header and a
    W3C ``traceresponse`` header.
    """

    def __init__(
        self,
        app: ASGIApp,
        tracer_provider: trace.TracerProvider | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.app = app
        self._tracer = trace.get_tracer("dtc_otel.starlette", tracer_provider=tracer_provider)
        settings = settings or current_settings()
        self._request_id_headers = frozenset(name.encode("latin-1") for name in settings.request_id_headers)
        self._response_header = settings.response_id_header.encode("latin-1") if settings.response_id_header else None
        self._untrusted_paths = settings.untrusted_paths
        self._baggage_keys = settings.baggage_keys
        self._freeze_pending = settings.gc_freeze
        # The upstream ASGI instrumentation's header capture settings, read
        # with its own helpers so that names, patterns and masking match.
        self._capture_request = get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST)
        self._capture_response = get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE)
        self._sensitive_headers = get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS)
        self._direct = DirectAttributes(self._tracer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or SCOPE_SPAN_KEY in scope:
            await self.app(scope, receive, send)
            return
        if self._freeze_pending:
            self._freeze_pending = False
            _freeze_startup_objects()

        try:
            span, tokens = self._start(scope)
        except Exception:  # noqa: BLE001 - a tracing failure must not fail the request
            log_once_per_interval(_logger, "could not start the server span", exc_info=True)
            await self.app(scope, receive, send)
            return

        status_code = 0
        error_type = None
        response_headers = self._response_headers(span)

        async def send_with_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                if self._capture_response:
                    self._capture_headers(span, message.get("headers", ()))
                if response_headers:
                    message["headers"] = _add_headers(message.get("headers", ()), response_headers)
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except BaseException as exc:
            error_type = type(exc).__qualname__
            # The server logs this exception after the span has ended;
            # the log chain reads the IDs from here (see _logs.py).
            with contextlib.suppress(AttributeError, TypeError):
                exc.__dtc_otel_span_context__ = span.get_span_context()  # type: ignore[attr-defined]
                exc.__dtc_otel_request_id__ = request_id_var.get()  # type: ignore[attr-defined]
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, error_type))
            if not status_code:
                status_code = 500
            raise
        finally:
            try:
                self._finish(span, scope, status_code, error_type)
            finally:
                _reset(tokens)

    def _response_headers(self, span: trace.Span) -> list[tuple[bytes, bytes]]:
        span_context = span.get_span_context()
        if not span_context.is_valid:
            return []

        trace_id = span_context.trace_id.to_bytes(16, "big").hex()
        span_id = span_context.span_id.to_bytes(8, "big").hex()
        # The request's log lines need the same two strings.
        remember_ids(span, trace_id, span_id)
        headers = [(b"traceresponse", f"00-{trace_id}-{span_id}-{span_context.trace_flags:02x}".encode("ascii"))]
        if self._response_header:
            headers.append((self._response_header, trace_id.encode("ascii")))

        return headers

    def _capture_headers(self, span: trace.Span, headers: Any) -> None:
        try:
            captured = get_custom_header_attributes(
                _header_lists(headers), self._capture_response, self._sensitive_headers, normalise_response_header_name
            )
            if captured:
                span.set_attributes(captured)
        except Exception:  # noqa: BLE001 - a capture failure must not fail the response
            log_once_per_interval(_logger, "response header capture failed", exc_info=True)

    def _untrusted(self, path: str) -> bool:
        return any(prefix == "*" or path.startswith(prefix) for prefix in self._untrusted_paths)

    def _start(self, scope: Scope) -> tuple[trace.Span, _Tokens]:
        carrier: dict[str, str] | None = None
        user_agent = None
        host = None
        inbound_request_id = None
        for key, value in scope["headers"]:
            if key in _CONTEXT_HEADERS:
                if carrier is None:
                    carrier = {}
                carrier[key.decode("latin-1")] = value.decode("latin-1")
            elif key == b"user-agent":
                user_agent = value.decode("latin-1")
            elif key == b"host":
                host = value.decode("latin-1")
            elif key in self._request_id_headers and inbound_request_id is None:
                inbound_request_id = value.decode("latin-1")

        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if method not in _KNOWN_METHODS:
            attributes["http.request.method_original"] = method
        server = scope.get("server")
        if host:
            name, _, port = host.rpartition(":") if host.rpartition(":")[2].isdigit() else (host, "", "")
            attributes["server.address"] = name
            if port:
                attributes["server.port"] = int(port)
        elif server:
            attributes["server.address"] = server[0]
            if server[1] is not None:
                attributes["server.port"] = server[1]
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        if user_agent:
            attributes["user_agent.original"] = user_agent

        if self._capture_request:
            attributes.update(
                get_custom_header_attributes(
                    _header_lists(scope["headers"]),
                    self._capture_request,
                    self._sensitive_headers,
                    normalise_request_header_name,
                )
            )

        parent = propagate.extract(carrier) if carrier else None
        links = None
        if parent is not None and self._untrusted_paths and self._untrusted(scope["path"]):
            # A public caller's trace context is kept as a link, not a parent,
            # so outsiders cannot pick our trace IDs or sampling decisions.
            caller = trace.get_current_span(parent).get_span_context()
            links = [trace.Link(caller)] if caller.is_valid else None
            parent = None

        name = attributes["http.request.method"] if method in _KNOWN_METHODS else "HTTP"
        if not self._capture_request and self._direct.usable():
            # Nothing reads them while the span starts, and all are strings
            # or integers: set them after start, without the SDK's cleaning.
            span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, links=links)
            put_attributes(span, attributes)
        else:
            span = self._tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes, links=links
            )
        scope[SCOPE_SPAN_KEY] = span
        tokens = _Tokens(context.attach(trace.set_span_in_context(span, parent)))

        if inbound_request_id is not None:
            self._bind_request_id(span, inbound_request_id, tokens)
        if parent is not None and self._baggage_keys:
            self._bind_baggage_entities(parent, tokens)

        return span, tokens

    @staticmethod
    def _bind_request_id(span: trace.Span, value: str, tokens: _Tokens) -> None:
        problem = check_request_id(value)
        if problem is not None:
            # The raw value stays out of the log: it may carry injected lines.
            log_once_per_interval(_logger, "inbound request ID replaced by the trace ID", reason=problem)
            span.set_attribute("dtc.request_id_replaced", problem)
            span_context = span.get_span_context()
            value = format(span_context.trace_id, "032x") if span_context.is_valid else uuid.uuid4().hex

        span.set_attribute("request_id", value)
        tokens.request_id = request_id_var.set(value)
        tokens.log = structlog.contextvars.bind_contextvars(request_id=value)

    @staticmethod
    def _bind_baggage_entities(parent: Context, tokens: _Tokens) -> None:
        entities = {
            key: sanitize_partner_value(str(value))
            for key, value in baggage.get_all(parent).items()
            if key in current_settings().baggage_keys
        }
        if entities:
            tokens.entities = bind_for_request(entities)

    @staticmethod
    def _finish(span: trace.Span, scope: Scope, status_code: int, error_type: str | None) -> None:
        route = _route_template(scope)
        method = scope["method"]
        attributes: dict[str, str | int] = {}
        if route:
            attributes["http.route"] = route
            span.update_name(f"{method if method in _KNOWN_METHODS else 'HTTP'} {route}")
        if status_code:
            attributes["http.response.status_code"] = status_code
            if status_code >= 500 and error_type is None:
                error_type = str(status_code)
                span.set_status(Status(StatusCode.ERROR))
        if error_type is not None:
            attributes["error.type"] = error_type
        put_attributes(span, attributes)
        span.end()


class _Tokens:
    """Tokens of the context variables a request set, to be reset when it ends."""

    __slots__ = ("context", "entities", "log", "request_id")

    def __init__(self, context_token: object) -> None:
        self.context = context_token
        self.request_id: Any = None
        self.log: Any = None
        self.entities: Any = None


def _reset(tokens: _Tokens) -> None:
    # Reset in the reverse order of setting, so each token is current when used.
    if tokens.entities is not None:
        reset_request_entities(tokens.entities)
    if tokens.log is not None:
        structlog.contextvars.reset_contextvars(**tokens.log)
    if tokens.request_id is not None:
        request_id_var.reset(tokens.request_id)
    context.detach(tokens.context)


def _header_lists(raw: Any) -> dict[str, list[str]]:
    """Group ASGI headers by lowercase name: a repeated header keeps every value."""
    headers: dict[str, list[str]] = {}
    for key, value in raw:
        headers.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))

    return headers


def _add_headers(existing: Any, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    headers = list(existing)
    present = {key.lower() for key, _ in headers}

    # A header the app set itself wins over ours.
    return headers + [(key, value) for key, value in extra if key not in present]


def _freeze_startup_objects() -> None:
    # Tracing allocates a few objects per request, which makes the cyclic
    # garbage collector run full collections more often, and each one walks
    # every module and object loaded at start-up: up to 36 ms each in the
    # middle of some request (benchmarks/uvicorn_gc.py, docs/benchmarks.md). Freezing what exists at
    # the first request takes those objects out of every later collection.
    # Cyclic garbage at that moment is collected first, so nothing leaks.
    try:
        gc.collect()
        gc.freeze()
    except Exception:  # noqa: BLE001 - an optimisation must never fail a request
        log_once_per_interval(_logger, "gc.freeze failed", exc_info=True)


def _route_template(scope: Scope) -> str | None:
    # FastAPI puts the matched route in the scope; plain Starlette only puts
    # the endpoint, so the template is looked up from the app's routes then.
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return str(scope.get("root_path", "")) + str(path)

    app = scope.get("app")
    endpoint = scope.get("endpoint")
    if app is None or endpoint is None:
        return None
    for candidate in getattr(app, "routes", ()):
        if getattr(candidate, "endpoint", None) is endpoint:
            template = getattr(candidate, "path_format", None) or getattr(candidate, "path", None)
            return str(template) if template else None

    return None


def _wrap_build_middleware_stack(original: Callable[[Any], ASGIApp]) -> Callable[[Any], ASGIApp]:
    @functools.wraps(original)
    def build_middleware_stack(self: Any) -> ASGIApp:
        stack = original(self)
        if isinstance(stack, ServerSpanMiddleware):
            return stack

        # Outside Starlette's ServerErrorMiddleware, so the app's catch-all
        # exception handler runs inside the span and its log line carries
        # the request's trace ID.
        return ServerSpanMiddleware(stack)

    build_middleware_stack._dtc_otel_original = original  # type: ignore[attr-defined]

    return build_middleware_stack


def _app_classes() -> list[type]:
    import starlette.applications

    classes: list[type] = [starlette.applications.Starlette]
    try:
        import fastapi
    except ImportError:
        return classes

    if "build_middleware_stack" in vars(fastapi.FastAPI):
        classes.append(fastapi.FastAPI)

    return classes


def _wrap_fastapi_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        # FastAPI 0.16x traces requests natively once a tracer provider is
        # set: a second server span plus three operation spans per request.
        # This middleware already opens the server span, so FastAPI's tracing
        # is turned off; its metrics and log settings stay as the app set them.
        # NOTE: FastAPI's operation spans (dependencies, endpoint,
        # serialization) are lost with it; there is no setting to keep them.
        telemetry = getattr(self, "_telemetry", None)
        if isinstance(telemetry, dict):
            telemetry["tracing"] = False
            telemetry["operation_spans"] = False

    __init__._dtc_otel_original = original  # type: ignore[attr-defined]

    return __init__


def _native_fastapi_telemetry() -> type | None:
    try:
        import fastapi
        import fastapi.telemetry  # noqa: F401 - present only where FastAPI traces natively
    except ImportError:
        return None

    return fastapi.FastAPI


class StarletteServerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Open one server span per request in every Starlette and FastAPI app."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.24",)

    def _instrument(self, **kwargs: Any) -> None:
        for cls in _app_classes():
            original = vars(cls)["build_middleware_stack"]
            if not hasattr(original, "_dtc_otel_original"):
                cls.build_middleware_stack = _wrap_build_middleware_stack(original)

        native = _native_fastapi_telemetry()
        if native is not None and not hasattr(vars(native)["__init__"], "_dtc_otel_original"):
            native.__init__ = _wrap_fastapi_init(vars(native)["__init__"])  # type: ignore[misc]

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls in _app_classes():
            current = vars(cls)["build_middleware_stack"]
            original = getattr(current, "_dtc_otel_original", None)
            if original is not None:
                cls.build_middleware_stack = original

        native = _native_fastapi_telemetry()
        if native is not None:
            original = getattr(vars(native)["__init__"], "_dtc_otel_original", None)
            if original is not None:
                native.__init__ = original  # type: ignore[misc]
