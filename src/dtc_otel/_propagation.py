"""Outbound context: traceparent, the correlation header and entity baggage, per host.

:class:`DtcPropagator` wraps the configured propagators (``OTEL_PROPAGATORS``,
W3C trace context and baggage by default). On inject it also writes the
correlation header and the allow-listed entity IDs as baggage, and it writes
nothing at all for hosts that must not see our IDs. The httpx request hook
records which host the next inject is for.
"""

from __future__ import annotations

import contextvars
import fnmatch
import logging
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from dtc_otel import _partners
from dtc_otel._config import Settings
from dtc_otel._entities import bound_entities
from dtc_otel._ratelimit import log_once_per_interval
from dtc_otel._request_id import current_request_id

__all__ = ["DtcPropagator", "httpx_hooks"]

_logger = logging.getLogger("dtc_otel.propagation")

# The host of the httpx request being sent. The request hook sets it just
# before upstream's instrumentation calls inject() in the same context.
_outbound_host: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtc_otel_outbound_host", default=None)


def _matches(host: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in patterns)


class DtcPropagator(TextMapPropagator):
    """Wrap *inner* with host filtering, the correlation header and entity baggage."""

    def __init__(self, inner: TextMapPropagator, settings: Settings) -> None:
        self._inner = inner
        self._header = settings.outbound_id_header
        self._allow = settings.propagate_hosts
        self._deny = settings.no_propagate_hosts
        self._baggage_keys = settings.baggage_keys

    def host_allowed(self, host: str) -> bool:
        """Return whether trace context and IDs may be sent to *host*."""
        host = host.lower()
        if self._allow and not _matches(host, self._allow):
            return False

        return not _matches(host, self._deny)

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        return self._inner.extract(carrier, context, getter)

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        host = _outbound_host.get()
        if host is not None:
            _outbound_host.set(None)
            if not self.host_allowed(host):
                return

        # Only allow-listed entity keys leave the process as baggage: entries
        # received from a caller are not passed on to third parties.
        context = context or get_current()
        outgoing = {key: value for key, value in baggage.get_all(context).items() if key in self._baggage_keys}
        entities = bound_entities()
        for key in self._baggage_keys.intersection(entities):
            outgoing[key] = str(entities[key])
        context = baggage.clear(context)
        for key, value in outgoing.items():
            context = baggage.set_baggage(key, value, context)
        self._inner.inject(carrier, context, setter)

        if self._header:
            value = current_request_id()
            if value is None:
                span_context = trace.get_current_span(context).get_span_context()
                value = format(span_context.trace_id, "032x") if span_context.is_valid else None
            if value is not None:
                setter.set(carrier, self._header, value)

    @property
    def fields(self) -> set[str]:
        fields = set(self._inner.fields)
        if self._header:
            fields.add(self._header)

        return fields


def _request_hook(span: Any, request: Any) -> None:
    try:
        _outbound_host.set(request.url.host)
        _partners.client_span.set(span)
    except Exception:  # noqa: BLE001 - a failing hook must never break the call
        log_once_per_interval(_logger, "httpx request hook failed", exc_info=True)


def _response_hook(span: Any, request: Any, response: Any) -> None:
    try:
        if span.is_recording():
            _partners.set_span_attributes(span, request.url.host, response.headers)
    except Exception:  # noqa: BLE001
        log_once_per_interval(_logger, "httpx response hook failed", exc_info=True)


async def _async_request_hook(span: Any, request: Any) -> None:
    _request_hook(span, request)


async def _async_response_hook(span: Any, request: Any, response: Any) -> None:
    _response_hook(span, request, response)


def httpx_hooks() -> dict[str, Any]:
    """Return the hook arguments for upstream's ``HTTPXClientInstrumentor.instrument``."""
    return {
        "request_hook": _request_hook,
        "response_hook": _response_hook,
        "async_request_hook": _async_request_hook,
        "async_response_hook": _async_response_hook,
    }
