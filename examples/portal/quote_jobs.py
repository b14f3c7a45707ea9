"""Jobs that follow a quote approval: prepare the quote documents, then email them to the customer.

The approve route enqueues the first job and runs the chain as a background task,
after the response is sent. With the audit trail on, each job is a row in
dtc_audit.job_queue and each attempt adds rows to dtc_audit.job_events.
"""

import asyncio

import structlog

import audit_hooks
import live_events
from entities import bind

MAX_ATTEMPTS = 3
# Short on purpose, so that the demo's retry finishes within a second.
BACKOFF_SECONDS = 0.2

# The first document attempt for these quotes fails with a simulated timeout, once per process,
# so that the demo shows a job that fails, is retried and succeeds.
SIMULATED_TIMEOUT_QUOTES = frozenset({44})
_timed_out_quotes: set[int] = set()

log = structlog.get_logger()


class DocumentRendererTimeout(TimeoutError):
    """Raised when the simulated document renderer times out."""


@audit_hooks.job_handler("prepare_quote_documents", max_attempts=MAX_ATTEMPTS, backoff_seconds=BACKOFF_SECONDS)
async def prepare_quote_documents(payload: dict) -> str:
    """Render the quote PDF; return its file name. Simulated with a short sleep."""
    quote_id = payload["quote_id"]
    await asyncio.sleep(0.02)
    if quote_id in SIMULATED_TIMEOUT_QUOTES and quote_id not in _timed_out_quotes:
        _timed_out_quotes.add(quote_id)
        raise DocumentRendererTimeout(f"document renderer timed out for quote {quote_id} (simulated)")

    document = f"quote-{quote_id}.pdf"
    log.info("quote documents prepared", quote_id=quote_id, document=document)
    return document


@audit_hooks.job_handler("send_quote_email", max_attempts=MAX_ATTEMPTS, backoff_seconds=BACKOFF_SECONDS)
async def send_quote_email(payload: dict) -> None:
    """Email the quote documents to the customer. Simulated with a short sleep."""
    await asyncio.sleep(0.02)
    log.info(
        "quote email sent",
        quote_id=payload["quote_id"],
        customer_id=payload["customer_id"],
        document=payload["document"],
    )


def enqueue_quote_documents(quote_id: int, customer_id: int, invoice_id: int) -> tuple[str, dict]:
    """Record the first job of the chain; return its job ID and payload for run_approval_jobs."""
    payload = {"quote_id": quote_id, "customer_id": customer_id, "invoice_id": invoice_id}
    job_id = audit_hooks.enqueue("prepare_quote_documents", payload, max_attempts=MAX_ATTEMPTS)
    return job_id, payload


async def run_approval_jobs(job_id: str, payload: dict, pool) -> None:
    """Run prepare_quote_documents, then enqueue and run send_quote_email.

    A job that fails every attempt ends the chain. The failure is logged here,
    because nothing awaits a background task's result. The error text stays in
    dtc_audit.job_events, because it may contain customer data. The end of
    the chain is published on topic quote:<id> (ready_to_pay or
    preparation_failed) with a connection from *pool*.
    """
    quote_id = payload["quote_id"]
    customer_id = payload["customer_id"]
    # The request bound these already. Binding them again keeps them if the task runs in a new context.
    bind(quote_id=quote_id, customer_id=customer_id)
    try:
        document = await prepare_quote_documents(payload, job_id=job_id)
        email_payload = {"quote_id": quote_id, "customer_id": customer_id, "document": document}
        email_job_id = audit_hooks.enqueue("send_quote_email", email_payload, max_attempts=MAX_ATTEMPTS)
        await send_quote_email(email_payload, job_id=email_job_id)
    except Exception as exc:
        log.error(
            "quote approval job failed",
            quote_id=quote_id,
            customer_id=customer_id,
            job_id=job_id,
            error_type=type(exc).__qualname__,
        )
        await live_events.publish_quote_state_now(
            pool, quote_id, live_events.PREPARATION_FAILED, customer_id=customer_id
        )
        return

    await live_events.publish_quote_state_now(pool, quote_id, live_events.READY_TO_PAY, customer_id=customer_id)
