"""POST /webhooks/payments: payment events from the payment provider, signed like Stripe webhooks.

The body is an event such as::

    {"id": "evt_...", "type": "payment.succeeded",
     "data": {"invoice_id": 3, "amount_cents": 34200, "charge_id": "ch_..."}}

``amount_cents`` defaults to the open balance and ``charge_id`` to the event ID.
"""

import os
from dataclasses import asdict
from typing import Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, ValidationError

import audit_hooks
import db
import live_events
from entities import bind

WEBHOOK_SECRET_ENV = "PORTAL_WEBHOOK_SECRET"
# A demo value, public in this repository. Set PORTAL_WEBHOOK_SECRET to the provider's secret.
DEMO_WEBHOOK_SECRET = "whsec_portal_demo_secret"

log = structlog.get_logger()
router = APIRouter()


def webhook_secret() -> str:
    """Return $PORTAL_WEBHOOK_SECRET, else the demo secret."""
    return os.environ.get(WEBHOOK_SECRET_ENV) or DEMO_WEBHOOK_SECRET


receive_payment_delivery = audit_hooks.PaymentWebhookReceiver(webhook_secret())


class PaymentSucceeded(BaseModel):
    invoice_id: int
    amount_cents: int | None = Field(default=None, gt=0)
    charge_id: str | None = Field(default=None, min_length=1, max_length=64)


@router.post("/webhooks/payments")
async def receive_payment_webhook(request: Request, delivery: Any = Depends(receive_payment_delivery)):
    """Record the payment of a verified payment.succeeded event; ignore other event types.

    dtc-otel's receiver has already stored the delivery and checked its signature.
    A repeat of an event ID that was handled before returns 200 without a second payment.
    A repeat of an event whose earlier delivery failed is processed again.
    """
    if delivery.duplicate:
        log.info("payment webhook duplicate ignored", provider_event_id=delivery.provider_event_id)
        return {"status": "duplicate"}
    if delivery.event_type != "payment.succeeded":
        log.info(
            "payment webhook ignored", provider_event_id=delivery.provider_event_id, event_type=delivery.event_type
        )
        return {"status": "ignored"}
    if not delivery.provider_event_id:
        # Without an event ID, a repeat of this event could not be distinguished from a new payment.
        log.info("payment webhook rejected, no event ID", event_type=delivery.event_type)
        raise HTTPException(status_code=422, detail="the event has no id")

    data = delivery.json.get("data") if isinstance(delivery.json, dict) else None
    try:
        event = PaymentSucceeded.model_validate(data)
    except ValidationError as exc:
        log.info(
            "payment webhook rejected, invalid data",
            provider_event_id=delivery.provider_event_id,
            invalid_fields=[".".join(map(str, error["loc"])) for error in exc.errors()],
        )
        raise HTTPException(
            status_code=422, detail="data must contain invoice_id and may contain amount_cents and charge_id"
        ) from None

    pool = request.app.state.db_pool
    invoice = await db.fetch_invoice(pool, event.invoice_id)
    if invoice is None:
        log.info(
            "payment webhook for unknown invoice",
            invoice_id=event.invoice_id,
            provider_event_id=delivery.provider_event_id,
        )
        raise HTTPException(status_code=404, detail=f"invoice {event.invoice_id} not found")
    bind(invoice_id=invoice.id, quote_id=invoice.quote_id, customer_id=invoice.customer_id)

    open_cents = invoice.amount_cents - invoice.paid_cents
    if invoice.status == "paid" or open_cents <= 0:
        log.info(
            "payment webhook for a paid invoice", invoice_id=invoice.id, provider_event_id=delivery.provider_event_id
        )
        return {"status": "already_paid", "invoice": asdict(invoice)}
    amount_cents = event.amount_cents or open_cents
    if amount_cents > open_cents:
        log.info(
            "payment webhook rejected, amount exceeds open balance",
            invoice_id=invoice.id,
            amount_cents=amount_cents,
            open_cents=open_cents,
        )
        raise HTTPException(
            status_code=422,
            detail=f"amount_cents {amount_cents} exceeds the open balance of {open_cents} on invoice {invoice.id}",
        )

    charge_id = event.charge_id or delivery.provider_event_id
    await live_events.publish_quote_state_now(
        pool,
        invoice.quote_id,
        live_events.PAYMENT_RECORDING,
        customer_id=invoice.customer_id,
        invoice_id=invoice.id,
    )
    payment, invoice = await db.record_payment(
        pool, invoice.id, amount_cents, charge_id, before_commit=live_events.announce_payment
    )
    log.info(
        "payment webhook recorded",
        payment_id=payment.id,
        invoice_id=invoice.id,
        customer_id=invoice.customer_id,
        amount_cents=amount_cents,
        invoice_status=invoice.status,
        provider_event_id=delivery.provider_event_id,
    )
    return {"status": "processed", "payment": asdict(payment), "invoice": asdict(invoice)}
