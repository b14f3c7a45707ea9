"""The portal's only use of dtc_otel.audit: jobs, one-shot markers and the payment webhook receiver.

The audit trail is on when dtc_otel is installed, the portal runs under
dtc-otel-run and DTC_OTEL_AUDIT is not false. Job attempts reach the audit tables through dtc-otel's span
processor, so a plain run would leave every job row 'pending'. With the audit
trail off, the portal still runs: jobs run with the same retries but are not
recorded, markers last for the process, and the webhook route returns 503.
"""

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import HTTPException, Request

try:
    from dtc_otel import audit, load_settings
    from opentelemetry import trace
except ImportError:
    audit = None

WEBHOOK_PROVIDER = "payments"

log = structlog.get_logger()

# Set by configure() at startup.
enabled = False
schema = "dtc_audit"

# Marker keys set in this process, used only while the audit trail is off.
_process_markers: set[str] = set()


def tracing_active() -> bool:
    """Return whether dtc-otel set up an SDK tracer provider, as dtc-otel-run does."""
    return audit is not None and hasattr(trace.get_tracer_provider(), "add_span_processor")


def configure(database_url: str) -> bool:
    """Create or update the audit schema in *database_url* and start the writer; return whether it is on.

    Blocks on the migrations, so call it from a worker thread in async code.
    """
    global enabled, schema
    if audit is None:
        log.info("audit trail off", reason="dtc_otel is not installed")
        return False
    if not tracing_active():
        log.info("audit trail off", reason="tracing is not set up; run the portal under dtc-otel-run")
        return False

    settings = load_settings()
    if not settings.audit:
        log.info("audit trail off", reason="DTC_OTEL_AUDIT is false")
        return False

    schema = settings.audit_schema
    audit.configure(database_url, schema=schema)
    enabled = True
    log.info("audit trail on", schema=schema)
    return True


def flush(timeout_seconds: float) -> bool:
    """Wait until the audit writer wrote every queued event; return False on timeout.

    Blocks, so call it from a worker thread in async code.
    """
    if not enabled:
        return True
    from dtc_otel import audit

    flushed = audit.flush(timeout_seconds)
    if not flushed:
        log.warning("audit writer did not flush in time", timeout_seconds=timeout_seconds)
    return flushed


def enqueue(kind: str, payload: dict[str, Any], *, max_attempts: int) -> str:
    """Record a pending job of *kind* with the bound entity IDs; return its job ID."""
    if not enabled:
        return str(uuid.uuid4())
    return audit.enqueue(kind, payload, max_attempts=max_attempts)


def job_handler(
    kind: str, *, max_attempts: int, backoff_seconds: float
) -> Callable[[Callable[[dict], Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate an async job function ``fn(payload)`` to retry it, recording each attempt when audit is on.

    The wrapped function takes ``(payload, *, job_id=None)``. Every failed attempt is
    logged with the error type only, because the error text may contain customer data.
    With the audit trail on, the text is in the job_events table.
    """

    def decorate(fn: Callable[[dict], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def attempt_logged(payload: dict) -> Any:
            try:
                return await fn(payload)
            except Exception as exc:
                log.warning("job attempt failed", job_kind=kind, error_type=type(exc).__qualname__)
                raise

        if audit is not None:
            # Without a configured writer, dtc-otel's handler still retries but records nothing.
            retrying = audit.job_handler(kind, max_attempts=max_attempts, backoff=lambda attempt: backoff_seconds)
            return retrying(attempt_logged)

        @functools.wraps(fn)
        async def run(payload: dict, *, job_id: str | None = None) -> Any:
            for attempt in range(1, max_attempts + 1):
                try:
                    return await attempt_logged(payload)
                except Exception:
                    if attempt == max_attempts:
                        raise
                    await asyncio.sleep(backoff_seconds)

        return run

    return decorate


async def mark_once(name: str, **entity_ids: Any) -> bool:
    """Record marker *name* for *entity_ids*; return True only the first time.

    With the audit trail on, the marker is a database row, so only one call across all
    processes and restarts gets True. With it off, one call per process gets True.
    """
    if enabled:
        return await audit.amark_once(name, **entity_ids)

    key = ":".join([name, *(f"{key}={entity_ids[key]}" for key in sorted(entity_ids))])
    if key in _process_markers:
        return False
    _process_markers.add(key)
    return True


def sign_stripe(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return a Stripe-Signature header for *body*, or no header when dtc_otel is not installed."""
    if audit is None:
        return {}
    return audit.sign_stripe(secret, timestamp, body)


class PaymentWebhookReceiver:
    """FastAPI dependency for POST /webhooks/payments.

    With the audit trail on, it hands the request to dtc_otel's WebhookReceiver, which
    stores the delivery, verifies its Stripe-Signature header (401 on failure) and marks
    repeats of a provider event ID as duplicates. With it off, it returns 503 so that
    the sender retries later, because without the stored deliveries the portal could not
    tell a repeat from a new payment.
    """

    def __init__(self, secret: str) -> None:
        self._receiver = None
        if audit is not None:
            verifier = audit.StripeSignatureVerifier(secret)
            self._receiver = audit.WebhookReceiver(WEBHOOK_PROVIDER, verifier, event_id="id", event_type="type")

    async def __call__(self, request: Request) -> Any:
        if not enabled or self._receiver is None:
            log.warning("payment webhook rejected, audit trail off", path=request.url.path)
            raise HTTPException(
                status_code=503, detail="webhook deliveries need the audit trail: run the portal under dtc-otel-run"
            )
        return await self._receiver(request)
