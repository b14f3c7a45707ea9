"""Build the tracer provider and logging for one process from :class:`Settings`.

Both the auto-instrumentation configurator and :func:`dtc_otel.configure`
call :func:`configure`; a second call in the same process does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from dtc_otel import _lifecycle, _logs, _partners, _ratelimit
from dtc_otel._config import ConfigError, Settings, load_settings
from dtc_otel._encoding_processor import EncodingSpanProcessor
from dtc_otel._entities import EntitySpanProcessor
from dtc_otel._export import build_exporters, quiet_exporter_loggers
from dtc_otel._propagation import DtcPropagator
from dtc_otel._service_name import default_service_name
from dtc_otel._version import __version__

__all__ = ["configure", "current_settings"]

_logger = logging.getLogger("dtc_otel")


class _State:
    """The process-wide state of dtc-otel: set once by :func:`configure`."""

    settings: Settings | None = None
    provider: TracerProvider | None = None


_state = _State()


def current_settings() -> Settings:
    """Return the settings in force, loading them from the environment if needed."""
    if _state.settings is None:
        try:
            _state.settings = load_settings()
        except ConfigError as exc:
            _logger.error("dtc-otel is not active: %s", exc)
            _state.settings = Settings(disabled=True)

    return _state.settings


def _resource(settings: Settings) -> Resource:
    attributes: dict[str, object] = {
        "telemetry.distro.name": "dtc-otel",
        "telemetry.distro.version": __version__,
        "process.pid": os.getpid(),
    }
    if not settings.service_name:
        attributes["service.name"] = default_service_name(sys.argv)
    if "service.instance.id" not in settings.resource_attributes:
        attributes["service.instance.id"] = str(uuid.uuid4())

    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME,
    # which win over the defaults above except where noted.
    return Resource.create(attributes)  # type: ignore[arg-type]


def configure(settings: Settings | None = None) -> TracerProvider | None:
    """Set up tracing, export and log correlation for this process.

    Returns the tracer provider, or ``None`` when dtc-otel is disabled.

    Raises:
        ConfigError: an environment variable has an invalid value.
    """
    if _state.provider is not None:
        return _state.provider

    settings = settings or load_settings()
    _state.settings = settings
    if settings.disabled:
        return None

    _ratelimit.set_interval(settings.export_warning_interval)
    if settings.configure_logging:
        _logs.configure_logging(
            log_format=settings.log_format,
            log_level=settings.log_level,
            max_value_bytes=settings.log_value_max_bytes,
        )
    quiet_exporter_loggers()

    # The SDK's own exit hook could wait for a retrying exporter far longer
    # than a supervisor allows, so the bounded one in _lifecycle replaces it.
    provider = TracerProvider(resource=_resource(settings), shutdown_on_exit=False)
    # Entity IDs are set at span start, before any exporter receives the span.
    provider.add_span_processor(EntitySpanProcessor())
    exporters = build_exporters(settings)
    for exporter in exporters:
        # The OTLP/HTTP exporter takes spans masked and encoded as they end,
        # which keeps the export thread's GIL use short (_encoding_processor.py).
        processor = EncodingSpanProcessor if exporter.accepts_encoded_spans else BatchSpanProcessor
        provider.add_span_processor(processor(exporter))
    if settings.database_url and settings.audit:
        # Job spans are mirrored into the audit tables by the background writer.
        from dtc_otel.audit._processor import AuditSpanProcessor

        _configure_audit(settings)
        provider.add_span_processor(AuditSpanProcessor())
        provider._dtc_otel_audit = True  # type: ignore[attr-defined]
    trace.set_tracer_provider(provider)
    _configure_metrics()
    propagate.set_global_textmap(DtcPropagator(propagate.get_global_textmap(), settings))
    _partners.configure(settings)
    _state.provider = provider

    _lifecycle.install(
        provider,
        timeout=settings.shutdown_timeout,
        after_fork=[exporter.reset_after_fork for exporter in exporters],
        owns_instance_id="service.instance.id" not in settings.resource_attributes,
        export_failing=lambda: any(exporter.failing for exporter in exporters),
        before_shutdown=[lambda: _shutdown_audit(settings.shutdown_timeout)],
    )
    _logger.debug("dtc-otel configured: %r", settings)

    return provider


def _shutdown_audit(timeout: float) -> None:
    from dtc_otel.audit._state import audit_state

    # Looked up at exit: dtc_otel.audit.configure() may have replaced the writer since start-up.
    writer = audit_state.writer
    if writer is not None:
        writer.shutdown(timeout)


def _configure_audit(settings: Settings) -> None:
    from dtc_otel.audit._state import audit_state, default_spool_dir
    from dtc_otel.audit._writer import AuditWriter

    audit_state.database_url = settings.database_url
    audit_state.schema = settings.audit_schema
    audit_state.writer = AuditWriter(
        settings.database_url or "",
        settings.audit_schema,
        settings.audit_spool_dir or default_spool_dir(settings.audit_schema, settings.database_url),
        connections=settings.audit_connections,
    )


def _configure_metrics() -> None:
    # Metrics stay off unless asked for: a meter provider also turns on
    # FastAPI's own per-request metrics, which cost time on every request.
    exporter_name = os.environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return

    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    if exporter_name == "console":
        exporter: object = ConsoleMetricExporter()
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter()
    else:
        _logger.error("OTEL_METRICS_EXPORTER=%r is not supported; expected otlp, console or none", exporter_name)
        return

    reader = PeriodicExportingMetricReader(exporter)  # type: ignore[arg-type]
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader], resource=_state.provider.resource if _state.provider else None))
