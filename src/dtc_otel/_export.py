"""Span exporters chosen by ``OTEL_TRACES_EXPORTER``, wrapped so failures stay quiet.

The OTLP exporter runs on the batch processor's worker thread, never on the
request path. :class:`GuardedExporter` keeps its failures from reaching the
app: an exception becomes a failed export, repeated warnings are rate-limited,
and one line reports when export works again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from dtc_otel._config import ConfigError, Settings
from dtc_otel._ratelimit import RateLimitFilter, log_once_per_interval
from dtc_otel._span_redaction import redact_spans

__all__ = ["GuardedExporter", "build_exporters", "quiet_exporter_loggers"]

_logger = logging.getLogger("dtc_otel.export")

# Loggers of the SDK and the OTLP exporter that repeat one line per failed
# batch while the collector is down.
_NOISY_LOGGERS = (
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.http_transport",
    "opentelemetry.exporter.http_transport._http",
    "opentelemetry.exporter.otlp.common.http",
    "urllib3.connectionpool",
)


class GuardedExporter(SpanExporter):
    """Wrap an exporter built by *factory*: no exception escapes, warnings are rate-limited.

    After a fork, the child builds a fresh exporter from *factory*, because
    the parent's HTTP connection pool must not be shared between processes.
    """

    def __init__(self, factory: Callable[[], SpanExporter], name: str) -> None:
        self._factory = factory
        self._name = name
        self._exporter = factory()
        self._failures = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            # Secrets are masked here, on the export thread, for every exporter.
            result = self._exporter.export(redact_spans(spans))
        except Exception:  # noqa: BLE001 - an export error must never reach the app
            result = SpanExportResult.FAILURE
            log_once_per_interval(
                _logger, "span export failed", exc_info=True, exporter=self._name, spans=len(spans)
            )

        with self._lock:
            if result is SpanExportResult.SUCCESS:
                if self._failures:
                    _logger.warning(
                        "span export resumed exporter=%s failed_batches=%d", self._name, self._failures
                    )
                self._failures = 0
            else:
                self._failures += 1
                log_once_per_interval(_logger, "span export failing", exporter=self._name)

        return result

    def shutdown(self) -> None:
        try:
            self._exporter.shutdown()
        except Exception:  # noqa: BLE001
            _logger.debug("exporter shutdown failed", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return bool(self._exporter.force_flush(timeout_millis))
        except Exception:  # noqa: BLE001
            return False

    @property
    def accepts_encoded_spans(self) -> bool:
        """Whether the inner exporter takes spans that ``EncodingSpanProcessor`` encoded."""
        return bool(getattr(self._exporter, "accepts_encoded_spans", False))

    @property
    def failing(self) -> bool:
        """Whether the last export failed, or the collector does not accept connections now."""
        if self._failures > 0:
            return True
        if self._name != "otlp":
            return False

        return not _endpoint_accepts_connections()

    def reset_after_fork(self) -> None:
        """Replace the inner exporter with a new one built in this process."""
        self._lock = threading.Lock()
        self._failures = 0
        try:
            self._exporter = self._factory()
        except Exception:  # noqa: BLE001
            _logger.warning("could not rebuild the span exporter after fork", exc_info=True)


def _endpoint_accepts_connections() -> bool:
    # A quick TCP connect at shutdown: when nothing listens, the final export
    # would only retry until its timeout, so the exit need not wait for it.
    endpoint = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "http://localhost"
    )
    parts = urlsplit(endpoint)
    grpc = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")) == "grpc"
    if parts.port:
        port = parts.port
    elif parts.scheme == "https":
        port = 443
    else:
        port = 4317 if grpc else 4318
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=0.2):
            return True
    except OSError:
        return False


def _otlp_factory(protocol: str) -> Callable[[], SpanExporter]:
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigError(
                "invalid OTEL_EXPORTER_OTLP_PROTOCOL='grpc': the gRPC exporter is not installed; "
                "install opentelemetry-exporter-otlp-proto-grpc==1.45.1 or use http/protobuf"
            ) from exc

        return OTLPSpanExporter

    return _fast_http_exporter_class()


def _fast_http_exporter_class() -> type[SpanExporter]:
    """Return the OTLP/HTTP exporter class that serialises with the direct encoder."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

    from dtc_otel._otlp_encoder import EncodedSpan, encode_spans_to_bytes

    class FastOTLPSpanExporter(HTTPExporter):  # type: ignore[misc]
        """Upstream's OTLP/HTTP exporter (endpoint, headers, gzip, retries) with a faster encoder."""

        def __init__(self, *args: Any, session: Any = None, **options: Any) -> None:
            if session is None and "_transport" not in options:
                options["_transport"] = _export_transport(options)
            super().__init__(*args, session=session, **options)

        @property
        def accepts_encoded_spans(self) -> bool:
            """Whether :meth:`export` takes spans already encoded by ``encode_span``."""
            # NOTE: relies on the pinned exporter release's private _client;
            # without it the upstream encoder is used and spans stay objects.
            return getattr(self, "_client", None) is not None

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            if not self.accepts_encoded_spans or self._shutdown:
                return super().export(spans)
            try:
                body = encode_spans_to_bytes(spans)
            except Exception:  # noqa: BLE001 - fall back to the upstream encoder
                if any(isinstance(span, EncodedSpan) for span in spans):
                    log_once_per_interval(_logger, "joining encoded spans failed, batch dropped", exc_info=True, spans=len(spans))
                    return SpanExportResult.FAILURE
                _logger.debug("direct OTLP encoding failed; using the SDK encoder", exc_info=True)
                return super().export(spans)

            return SpanExportResult.SUCCESS if self._client.export(body).success else SpanExportResult.FAILURE

    return FastOTLPSpanExporter


# Settings that requests reads from the environment on every request while
# Session.trust_env is on.
_REQUESTS_ENVIRONMENT = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC",
)  # fmt: skip


def _uses_requests_environment() -> bool:
    """Return whether a proxy, CA bundle or netrc setting exists that only requests would apply."""
    try:
        has_netrc = any((Path.home() / name).exists() for name in (".netrc", "_netrc"))
    except (RuntimeError, OSError):
        # Without a home folder the lookup cannot be ruled out, so requests keeps it.
        has_netrc = True

    return has_netrc or any(os.environ.get(name) for name in _REQUESTS_ENVIRONMENT)


def _tls_options(options: dict[str, Any]) -> tuple[bool | str, str | tuple[str, str] | None]:
    """Return (verify, cert) from the exporter's arguments and environment, as upstream resolves them."""
    verify = (
        options.get("certificate_file")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        or os.environ.get("OTEL_EXPORTER_OTLP_CERTIFICATE")
        or True
    )
    key = (
        options.get("client_key_file")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY")
        or os.environ.get("OTEL_EXPORTER_OTLP_CLIENT_KEY")
    )
    cert = (
        options.get("client_certificate_file")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE")
        or os.environ.get("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
    )

    return verify, ((cert, key) if cert and key else cert)


def _export_transport(options: dict[str, Any]) -> Any:
    """Return the HTTP transport for span export: upstream's urllib3 one unless the environment needs requests.

    requests took about twice urllib3's CPU per export request here (487
    against 241 us for 44 KB), and with ``trust_env`` on it also looks for
    ``~/.netrc`` and proxy settings on every request. urllib3 reads none of those, so requests (with its usual
    behaviour) is kept whenever one of them is set.
    """
    from opentelemetry.exporter.http.transport import _RequestsHTTPTransport, _Urllib3HTTPTransport

    verify, cert = _tls_options(options)
    if _uses_requests_environment():
        import requests

        return _RequestsHTTPTransport(verify=verify, cert=cert, session=requests.Session())

    return _Urllib3HTTPTransport(verify=verify, cert=cert)


def build_exporters(settings: Settings) -> list[GuardedExporter]:
    """Build one guarded exporter for each name in ``OTEL_TRACES_EXPORTER``."""
    exporters = []
    for name in settings.traces_exporters:
        if name == "otlp":
            factory = _otlp_factory(settings.otlp_protocol)
        else:
            factory = ConsoleSpanExporter
        exporters.append(GuardedExporter(factory, name))

    return exporters


def quiet_exporter_loggers() -> None:
    """Rate-limit the SDK's and exporter's own repeated warnings."""
    limit = RateLimitFilter()
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RateLimitFilter) for existing in logger.filters):
            logger.addFilter(limit)
