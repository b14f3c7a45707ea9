"""Portal HTTP routes for quotes, invoices, payments and exchange rates."""

from dataclasses import asdict

import psycopg
import structlog
from fastapi import APIRouter, BackgroundTasks, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import audit_hooks
import db
import live_events
import partner_client
import quote_jobs
from entities import bind
from partner_client import PartnerError

DISCOUNT_PERCENT = {"SPRING10": 10, "PARTNER5": 5}

log = structlog.get_logger()
router = APIRouter()


class PaymentRequest(BaseModel):
    amount_cents: int | None = Field(default=None, gt=0, description="Defaults to the open balance.")
    payment_method: str = Field(default="tok_visa", min_length=1, max_length=64)


def discounted_amount_cents(quote: db.Quote) -> int:
    if quote.discount_code is None:
        return quote.amount_cents
    # Deliberate bug for the demo: an unknown discount code (quote 46) raises KeyError,
    # which reaches the catch-all exception handler and becomes a 500.
    percent = DISCOUNT_PERCENT[quote.discount_code]
    return quote.amount_cents * (100 - percent) // 100


def partner_failure_response(exc: PartnerError, **log_fields: object) -> JSONResponse:
    """Log the business outcome of a failed partner call and return the 502 for the portal's caller.

    The call itself (partner, status, both request IDs, duration) is logged by
    dtc-otel when the app runs under dtc-otel-run; this line adds what the
    portal decided.
    """
    log.info(
        "partner error returned to caller",
        operation=exc.operation,
        partner_status=exc.status_code,
        partner_request_id=exc.partner_request_id,
        reason=exc.reason,
        **log_fields,
    )
    return JSONResponse(
        status_code=502,
        content={
            "detail": f"partner {exc.operation} failed",
            "partner_status": exc.status_code,
            "partner_request_id": exc.partner_request_id,
        },
    )


def not_found(entity: str, entity_id: int) -> HTTPException:
    log.info(f"{entity} not found", **{f"{entity}_id": entity_id})
    return HTTPException(status_code=404, detail=f"{entity} {entity_id} not found")


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/quotes/{quote_id}")
async def read_quote(quote_id: int, request: Request):
    quote = await db.fetch_quote(request.app.state.db_pool, quote_id)
    if quote is None:
        raise not_found("quote", quote_id)
    return asdict(quote)


async def send_welcome_mail_once(customer_id: int) -> None:
    """Send the welcome mail (simulated by a log line) when this is the customer's first approved quote."""
    try:
        first = await audit_hooks.mark_once("portal_welcome_sent", customer_id=customer_id)
    except psycopg.Error as exc:
        # The approval is committed, so a failed marker write must not turn it into a 500.
        log.warning(
            "welcome marker not written, welcome mail skipped",
            customer_id=customer_id,
            error_type=type(exc).__qualname__,
        )
        return
    if first:
        log.info("welcome mail sent", customer_id=customer_id)


@router.post("/quotes/{quote_id}/approve")
async def approve_quote(quote_id: int, request: Request, background_tasks: BackgroundTasks):
    """Book a pending quote with the partner, mark it approved, create its invoice and start the follow-up jobs."""
    pool = request.app.state.db_pool
    quote = await db.fetch_quote(pool, quote_id)
    if quote is None:
        raise not_found("quote", quote_id)
    bind(quote_id=quote_id, customer_id=quote.customer_id)
    if quote.status != "pending":
        log.info("quote approval rejected", quote_id=quote_id, customer_id=quote.customer_id, status=quote.status)
        raise HTTPException(status_code=409, detail=f"quote {quote_id} is already {quote.status}")

    amount_cents = discounted_amount_cents(quote)
    try:
        booking = await partner_client.book_quote(
            request.app.state.partner_url, quote_id, amount_cents, quote.currency
        )
    except PartnerError as exc:
        return partner_failure_response(exc, quote_id=quote_id, customer_id=quote.customer_id)

    async def announce_payment_intent(conn, invoice: db.Invoice) -> None:
        # The invoice is what the live page's payment form pays.
        await live_events.publish_quote_state(
            conn,
            quote_id,
            live_events.PAYMENT_INTENT_READY,
            customer_id=quote.customer_id,
            invoice_id=invoice.id,
        )

    invoice = await db.approve_quote(
        pool, quote_id, booking.booking_id, booking.price_cents, before_commit=announce_payment_intent
    )
    if invoice is None:
        # NOTE: the partner booking stays in place here. A real portal would cancel it.
        log.warning("quote changed during approval", quote_id=quote_id, customer_id=quote.customer_id)
        raise HTTPException(status_code=409, detail=f"quote {quote_id} is no longer pending")

    log.info(
        "quote approved",
        quote_id=quote_id,
        customer_id=quote.customer_id,
        invoice_id=invoice.id,
        amount_cents=invoice.amount_cents,
        partner_request_id=booking.partner_request_id,
    )
    job_id, job_payload = quote_jobs.enqueue_quote_documents(quote_id, quote.customer_id, invoice.id)
    background_tasks.add_task(quote_jobs.run_approval_jobs, job_id, job_payload, pool)
    await send_welcome_mail_once(quote.customer_id)
    return {"quote_id": quote_id, "status": "approved", "booking_id": booking.booking_id, "invoice": asdict(invoice)}


@router.get("/invoices/{invoice_id}")
async def read_invoice(invoice_id: int, request: Request):
    invoice = await db.fetch_invoice(request.app.state.db_pool, invoice_id)
    if invoice is None:
        raise not_found("invoice", invoice_id)
    return asdict(invoice)


@router.post("/invoices/{invoice_id}/payments", status_code=201)
async def pay_invoice(invoice_id: int, payment_request: PaymentRequest, request: Request):
    """Charge the payment method through the partner and record the payment."""
    pool = request.app.state.db_pool
    invoice = await db.fetch_invoice(pool, invoice_id)
    if invoice is None:
        raise not_found("invoice", invoice_id)
    bind(invoice_id=invoice_id, quote_id=invoice.quote_id, customer_id=invoice.customer_id)

    open_cents = invoice.amount_cents - invoice.paid_cents
    if invoice.status == "paid" or open_cents <= 0:
        log.info("payment rejected, invoice already paid", invoice_id=invoice_id, customer_id=invoice.customer_id)
        raise HTTPException(status_code=409, detail=f"invoice {invoice_id} is already paid")
    amount_cents = payment_request.amount_cents or open_cents
    if amount_cents > open_cents:
        log.info(
            "payment rejected, amount exceeds open balance",
            invoice_id=invoice_id,
            customer_id=invoice.customer_id,
            amount_cents=amount_cents,
            open_cents=open_cents,
        )
        raise HTTPException(
            status_code=422,
            detail=f"amount_cents {amount_cents} exceeds the open balance of {open_cents} on invoice {invoice_id}",
        )

    entity_ids = {"customer_id": invoice.customer_id, "invoice_id": invoice_id}
    await live_events.publish_quote_state_now(pool, invoice.quote_id, live_events.PAYMENT_RECORDING, **entity_ids)
    try:
        charge = await partner_client.charge_invoice(
            request.app.state.partner_url, invoice_id, amount_cents, invoice.currency, payment_request.payment_method
        )
    except PartnerError as exc:
        await live_events.publish_quote_state_now(pool, invoice.quote_id, live_events.PAYMENT_FAILED, **entity_ids)
        return partner_failure_response(exc, invoice_id=invoice_id, customer_id=invoice.customer_id)

    payment, invoice = await db.record_payment(
        pool, invoice_id, amount_cents, charge.charge_id, before_commit=live_events.announce_payment
    )
    log.info(
        "payment recorded",
        payment_id=payment.id,
        invoice_id=invoice_id,
        customer_id=invoice.customer_id,
        amount_cents=amount_cents,
        invoice_status=invoice.status,
        partner_request_id=charge.partner_request_id,
    )
    return {"payment": asdict(payment), "invoice": asdict(invoice)}


@router.get("/exchange-rates/{currency}")
def read_exchange_rate(request: Request, currency: str = PathParam(pattern=r"^[A-Z]{3}$")):
    """Return the partner's EUR exchange rate.

    A sync route on purpose: FastAPI runs it in its thread pool, and it calls the
    partner with the blocking httpx.get.
    """
    try:
        rate = partner_client.fetch_exchange_rate(request.app.state.partner_url, currency)
    except PartnerError as exc:
        return partner_failure_response(exc, currency=currency)
    return {"base": rate.base, "currency": rate.currency, "rate": rate.rate}
