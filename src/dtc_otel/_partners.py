"""Partner request IDs: the third party's own ID, next to ours, on spans and failure lines.

The httpx hooks set ``dtc.partner.name`` and ``dtc.partner.request_id`` on the
client span. The ``send`` wrappers write exactly one ``partner call failed``
warning for a 4xx/5xx response or a transport error, with both request IDs,
so the two systems' logs can be joined.
"""

from __future__ import annotations

import contextvars
import fnmatch
import logging
import re
import time
from collections.abc import Collection, Iterable
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from wrapt import wrap_function_wrapper

from dtc_otel._config import Settings
from dtc_otel._ratelimit import log_once_per_interval

__all__ = ["PartnerInstrumentor", "PartnerMatcher", "sanitize_partner_value"]

_logger = logging.getLogger("dtc_otel.partners")
_log = structlog.get_logger("dtc_otel.partners")

_MAX_VALUE_LENGTH = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sanitize_partner_value(value: str) -> str:
    """Remove control characters and cap the length of a value a partner sent."""
    return _CONTROL.sub("", value)[:_MAX_VALUE_LENGTH]


class PartnerMatcher:
    """Map a host to a partner name and find the partner's request ID in response headers."""

    def __init__(self, partners: Iterable[tuple[str, str]], request_id_headers: Iterable[str]) -> None:
        self._partners = tuple(partners)
        self._headers = tuple(request_id_headers)
        self._names: dict[str, str] = {}

    def name_for(self, host: str) -> str:
        """Return the configured partner name for *host*, or the host itself."""
        name = self._names.get(host)
        if name is None:
            name = host
            for partner, pattern in self._partners:
                if fnmatch.fnmatchcase(host.lower(), pattern):
                    name = partner
                    break
            if len(self._names) < 1024:
                self._names[host] = name

        return name

    def request_id(self, headers: Any) -> str | None:
        """Return the partner's request ID from the first configured header present."""
        if headers is None:
            return None
        for header in self._headers:
            value = headers.get(header)
            if value:
                return sanitize_partner_value(str(value))

        return None


_matcher = PartnerMatcher((), ())


def configure(settings: Settings) -> None:
    """Load the partner names and request-ID headers from *settings*."""
    global _matcher
    _matcher = PartnerMatcher(settings.partners, settings.partner_request_id_headers)


def matcher() -> PartnerMatcher:
    return _matcher


def set_span_attributes(span: Any, host: str, headers: Any) -> None:
    """Set ``dtc.partner.name`` and ``dtc.partner.request_id`` on a client span."""
    span.set_attribute("dtc.partner.name", _matcher.name_for(host))
    request_id = _matcher.request_id(headers)
    if request_id:
        span.set_attribute("dtc.partner.request_id", request_id)


# The client span of the call in progress, recorded by the httpx request hook
# so that the failure line, written after the span ended, carries its IDs.
client_span: contextvars.ContextVar[Any] = contextvars.ContextVar("dtc_otel_client_span", default=None)


def _log_failure(request: Any, response: Any, error: BaseException | None, started: float) -> None:
    try:
        url = request.url
        fields: dict[str, Any] = {
            "partner": _matcher.name_for(url.host),
            "method": request.method,
            "host": url.host,
            "path": url.path,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if response is not None:
            fields["status"] = response.status_code
            request_id = _matcher.request_id(response.headers)
            if request_id:
                fields["partner_request_id"] = request_id
        if error is not None:
            fields["error_type"] = type(error).__qualname__
        span = client_span.get()
        if span is not None:
            with trace.use_span(span, end_on_exit=False):
                _log.warning("partner call failed", **fields)
        else:
            _log.warning("partner call failed", **fields)
    except Exception:  # noqa: BLE001 - a logging failure must never break the call
        log_once_per_interval(_logger, "could not log a failed partner call", exc_info=True)


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    request = args[0] if args else kwargs.get("request")
    client_span.set(None)
    started = time.perf_counter()
    try:
        response = wrapped(*args, **kwargs)
    except Exception as exc:
        _log_failure(request, None, exc, started)
        raise
    if response.status_code >= 400:
        _log_failure(request, response, None, started)

    return response


async def _send_async(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    request = args[0] if args else kwargs.get("request")
    client_span.set(None)
    started = time.perf_counter()
    try:
        response = await wrapped(*args, **kwargs)
    except Exception as exc:
        _log_failure(request, None, exc, started)
        raise
    if response.status_code >= 400:
        _log_failure(request, response, None, started)

    return response


class PartnerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Log one ``partner call failed`` line for each failed httpx call."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("httpx >= 0.23",)

    def _instrument(self, **kwargs: Any) -> None:
        import httpx

        if not hasattr(httpx.Client.send, "__wrapped__"):
            wrap_function_wrapper(httpx, "Client.send", _send)
        if not hasattr(httpx.AsyncClient.send, "__wrapped__"):
            wrap_function_wrapper(httpx, "AsyncClient.send", _send_async)

    def _uninstrument(self, **kwargs: Any) -> None:
        import httpx

        for cls in (httpx.Client, httpx.AsyncClient):
            wrapped = getattr(cls.send, "__wrapped__", None)
            if wrapped is not None:
                cls.send = wrapped
