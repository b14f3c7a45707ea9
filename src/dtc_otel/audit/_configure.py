"""Turn the audit trail on at run time, for apps that learn their database URL after start-up."""

from __future__ import annotations

import logging

from opentelemetry import trace

from dtc_otel.audit._schema import apply_migrations
from dtc_otel.audit._state import audit_state, default_spool_dir
from dtc_otel.audit._writer import AuditWriter

__all__ = ["configure", "flush"]

_logger = logging.getLogger("dtc_otel.audit")


def configure(database_url: str, *, schema: str | None = None, migrate: bool = True, spool_dir: str | None = None) -> None:
    """Point the audit trail at *database_url*, creating the tables first when *migrate* is true.

    ``dtc-otel-run`` does this by itself when ``DTC_OTEL_DATABASE_URL`` is set;
    call it when the URL is only known later, as with an embedded database.
    """
    from dtc_otel._setup import current_settings

    settings = current_settings()
    if not settings.audit:
        _logger.info("audit trail not started: DTC_OTEL_AUDIT is false")
        return
    schema = schema or settings.audit_schema
    if migrate:
        apply_migrations(database_url, schema)

    previous = audit_state.writer
    audit_state.database_url = database_url
    audit_state.schema = schema
    audit_state.writer = AuditWriter(
        database_url,
        schema,
        spool_dir or settings.audit_spool_dir or default_spool_dir(schema, database_url),
        connections=settings.audit_connections,
    )
    if previous is not None:
        previous.shutdown(2.0)

    provider = trace.get_tracer_provider()
    add = getattr(provider, "add_span_processor", None)
    if add is None:
        # Job attempts are recorded from their spans, so without an SDK
        # provider only enqueue() would write and every job would stay pending.
        _logger.warning(
            "audit trail has no tracer provider to watch job spans; run the app under dtc-otel-run "
            "or call dtc_otel.configure() before dtc_otel.audit.configure()"
        )
    elif not getattr(provider, "_dtc_otel_audit", False):
        from dtc_otel.audit._processor import AuditSpanProcessor

        add(AuditSpanProcessor())
        provider._dtc_otel_audit = True  # type: ignore[attr-defined]


def flush(timeout: float = 10.0) -> bool:
    """Wait until every queued audit event is written; return False on timeout or when audit is off."""
    writer = audit_state.writer
    return writer.flush(timeout) if writer is not None else False
