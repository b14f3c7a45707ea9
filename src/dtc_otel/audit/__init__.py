"""Audit tables: jobs, webhooks, markers and checkpoints mirrored durably into PostgreSQL.

Set ``DTC_OTEL_DATABASE_URL``, run ``dtc-otel migrate`` once, then use:

* :func:`enqueue`, :func:`job` and :func:`job_handler` for jobs,
* :func:`mark_once` for one-shot markers, :func:`save_checkpoint` and
  :func:`read_checkpoint` for backfill positions,
* :func:`record` to write audit rows inside the app's own transaction.

Every change is also an ``audit_events`` row announced with NOTIFY on the
``dtc_otel_audit`` channel. docs/audit.md shows the SQL that answers common
incident questions.
"""

from __future__ import annotations

from dtc_otel.audit._configure import configure, flush
from dtc_otel.audit._events import NOTIFY_CHANNEL, AuditEvent
from dtc_otel.audit._jobs import JobAttempt, enqueue, job, job_handler
from dtc_otel.audit._markers import (
    amark_once,
    aread_checkpoint,
    asave_checkpoint,
    mark_once,
    read_checkpoint,
    save_checkpoint,
)
from dtc_otel.audit._processor import AuditSpanProcessor
from dtc_otel.audit._record import arecord, record
from dtc_otel.audit._schema import apply_migrations, render_migrations
from dtc_otel.audit._writer import AuditWriter

from dtc_otel.audit._verifiers import (
    StandardWebhooksVerifier,
    StripeSignatureVerifier,
    VerificationResult,
    WebhookVerifier,
    sign_standard_webhook,
    sign_stripe,
)


def __getattr__(name: str) -> object:
    # The webhook receiver needs Starlette, which only web apps have installed.
    if name in ("WebhookReceiver", "WebhookDelivery"):
        from dtc_otel.audit import _webhooks

        return getattr(_webhooks, name)
    raise AttributeError(f"module 'dtc_otel.audit' has no attribute {name!r}")


__all__ = [
    "NOTIFY_CHANNEL",
    "AuditEvent",
    "AuditSpanProcessor",
    "AuditWriter",
    "JobAttempt",
    "amark_once",
    "apply_migrations",
    "aread_checkpoint",
    "arecord",
    "asave_checkpoint",
    "configure",
    "enqueue",
    "flush",
    "job",
    "job_handler",
    "mark_once",
    "read_checkpoint",
    "record",
    "render_migrations",
    "save_checkpoint",
    "StandardWebhooksVerifier",
    "StripeSignatureVerifier",
    "VerificationResult",
    "WebhookDelivery",
    "WebhookReceiver",
    "WebhookVerifier",
    "sign_standard_webhook",
    "sign_stripe",
]
