"""Client for the partner API: book quotes, charge invoices and read exchange rates."""

from dataclasses import dataclass

import httpx

REQUEST_ID_HEADER = "X-Request-ID"
TIMEOUT_SECONDS = 5.0

# Created at import time on purpose: under dtc-otel-run this client exists before the
# application code runs, which shows that clients created early are instrumented too.
http_client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS)


class PartnerError(Exception):
    """Failed partner call: an error status, or no response at all (status_code is None)."""

    def __init__(self, operation: str, status_code: int | None, partner_request_id: str | None, reason: str):
        super().__init__(f"partner {operation} failed: {reason}")
        self.operation = operation
        self.status_code = status_code
        self.partner_request_id = partner_request_id
        self.reason = reason


@dataclass(frozen=True)
class Booking:
    booking_id: str
    price_cents: int
    partner_request_id: str | None


@dataclass(frozen=True)
class Charge:
    charge_id: str
    partner_request_id: str | None


@dataclass(frozen=True)
class ExchangeRate:
    base: str
    currency: str
    rate: str
    partner_request_id: str | None


def read_success_body(response: httpx.Response, operation: str) -> dict:
    """Return the JSON body of a successful response, or raise PartnerError for an error status."""
    request_id = response.headers.get(REQUEST_ID_HEADER)
    if response.is_error:
        try:
            reason = response.json().get("error") or response.reason_phrase
        except ValueError:
            reason = response.reason_phrase
        raise PartnerError(operation, response.status_code, request_id, reason)
    return response.json()


def transport_error(operation: str, exc: httpx.TransportError) -> PartnerError:
    return PartnerError(operation, None, None, f"{type(exc).__name__}: {exc}")


async def book_quote(base_url: str, quote_id: int, amount_cents: int, currency: str) -> Booking:
    payload = {"quote_ref": f"Q-{quote_id}", "amount_cents": amount_cents, "currency": currency}
    try:
        response = await http_client.post(f"{base_url}/v1/bookings", json=payload)
    except httpx.TransportError as exc:
        raise transport_error("booking", exc) from exc

    body = read_success_body(response, "booking")
    return Booking(body["booking_id"], body["price_cents"], response.headers.get(REQUEST_ID_HEADER))


async def charge_invoice(
    base_url: str, invoice_id: int, amount_cents: int, currency: str, payment_method: str
) -> Charge:
    payload = {
        "reference": f"INV-{invoice_id}",
        "amount_cents": amount_cents,
        "currency": currency,
        "payment_method": payment_method,
    }
    try:
        response = await http_client.post(f"{base_url}/v1/charges", json=payload)
    except httpx.TransportError as exc:
        raise transport_error("charge", exc) from exc

    body = read_success_body(response, "charge")
    return Charge(body["charge_id"], response.headers.get(REQUEST_ID_HEADER))


def fetch_exchange_rate(base_url: str, currency: str) -> ExchangeRate:
    """Read the EUR exchange rate for `currency`. Blocking, so call it from a sync route or a thread."""
    try:
        response = httpx.get(f"{base_url}/v1/fx-rates/{currency}", timeout=TIMEOUT_SECONDS)
    except httpx.TransportError as exc:
        raise transport_error("exchange rate", exc) from exc

    body = read_success_body(response, "exchange rate")
    return ExchangeRate(body["base"], body["currency"], body["rate"], response.headers.get(REQUEST_ID_HEADER))
