"""AuditSpanProcessor: job spans in, audit events out, without touching the request path.

``on_start`` and ``on_end`` build an event from the span's attributes and the
side data the job API keeps beside the span, hand it to the writer's queue
and return. Nothing here waits on the database or raises into the app.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from dtc_otel._entities import ENTITY_KEYS_ATTRIBUTE, bound_entities
from dtc_otel._ratelimit import log_once_per_interval
from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._jobs import job_side_data
from dtc_otel.audit._state import audit_state

__all__ = ["AuditSpanProcessor"]

_logger = logging.getLogger("dtc_otel.audit")


def _epoch(nanoseconds: int | None) -> float:
    return nanoseconds / 1e9 if nanoseconds else time.time()


class AuditSpanProcessor(SpanProcessor):
    """Mirror job spans into ``job_queue`` and ``job_events`` rows."""

    def __init__(self) -> None:
        # Entity IDs bound when each job span started, by span ID.
        self._entities: dict[int, dict[str, Any]] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = span.attributes or {}
        if attributes.get("dtc.audit.type") != "job":
            return
        try:
            entities = dict(bound_entities())
            self._entities[span.context.span_id] = entities
            self._emit(span, "running", "started", entities, started_at=_epoch(span.start_time))
        except Exception:  # noqa: BLE001 - auditing must never fail the app
            log_once_per_interval(_logger, "could not record a job start", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes or {}
        kind = attributes.get("dtc.audit.type")
        if kind == "webhook":
            self._webhook_outcome(span)
            return
        if kind != "job":
            return
        try:
            entities = self._entities.pop(span.context.span_id, {})
            started_at = _epoch(span.start_time)
            finished_at = _epoch(span.end_time)
            if span.status.status_code is not StatusCode.ERROR:
                self._emit(span, "succeeded", "succeeded", entities, started_at=started_at, finished_at=finished_at)
                return

            error = job_side_data.pop(span.context.span_id, {}).get("error") or span.status.description
            outcome = str(attributes.get("dtc.job.outcome", "dead"))
            if outcome == "failed":
                self._emit(span, "failed", "failed", entities, error=error, started_at=started_at, finished_at=finished_at)
                return
            self._emit(span, "running", "failed", entities, error=error, started_at=started_at)
            self._emit(
                span, outcome, outcome, entities, error=error, started_at=started_at,
                finished_at=finished_at if outcome == "dead" else None,
            )  # fmt: skip
        except Exception:  # noqa: BLE001
            log_once_per_interval(_logger, "could not record a job outcome", exc_info=True)

    @staticmethod
    def _webhook_outcome(span: ReadableSpan) -> None:
        writer = audit_state.writer
        attributes = span.attributes or {}
        if writer is None or "dtc.webhook.delivery_id" not in attributes:
            return
        try:
            error = None
            for event in span.events:
                if event.name == "exception":
                    event_attributes = event.attributes or {}
                    error = f"{event_attributes.get('exception.type')}: {event_attributes.get('exception.message')}"[:500]
            status_code = attributes.get("http.response.status_code")
            entity_ids = {key: attributes[key] for key in attributes.get(ENTITY_KEYS_ATTRIBUTE, ()) if key in attributes}
            writer.enqueue(
                AuditEvent(
                    table="webhook_logs",
                    row_id=str(attributes["dtc.webhook.delivery_id"]),
                    status="processed" if error is None and (status_code or 500) < 400 else "failed",
                    data={
                        "provider": attributes.get("dtc.webhook.provider", ""),
                        "status_code": status_code,
                        "processing_error": error,
                        "processed_at": _epoch(span.end_time),
                        "summary": {"status_code": status_code, "signature": attributes.get("dtc.webhook.signature")},
                    },
                    entity_ids=entity_ids,
                    trace_id=format(span.context.trace_id, "032x"),
                )
            )
        except Exception:  # noqa: BLE001
            log_once_per_interval(_logger, "could not record a webhook outcome", exc_info=True)

    @staticmethod
    def _emit(
        span: ReadableSpan,
        status: str,
        transition: str,
        entities: dict[str, Any],
        *,
        error: str | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> None:
        writer = audit_state.writer
        if writer is None:
            return
        attributes = span.attributes or {}
        writer.enqueue(
            AuditEvent(
                table="job_queue",
                row_id=str(attributes["dtc.job.id"]),
                status=status,
                data={
                    "kind": attributes["dtc.job.kind"],
                    "attempts": attributes.get("dtc.job.attempt", 1),
                    "max_attempts": attributes.get("dtc.job.max_attempts", 1),
                    "last_error": error,
                    "transition": transition,
                    "started_at": started_at,
                    "finished_at": finished_at,
                },
                entity_ids=entities,
                trace_id=format(span.context.trace_id, "032x"),
            )
        )

    def shutdown(self) -> None:
        writer = audit_state.writer
        if writer is not None:
            writer.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        writer = audit_state.writer
        return writer.flush(timeout_millis / 1000) if writer is not None else True
