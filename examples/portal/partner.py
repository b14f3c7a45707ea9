"""Fake third-party partner API that books quotes, charges payments and quotes exchange rates.

The portal starts this as a separate process with OTEL_SDK_DISABLED=true, so it behaves
like an uninstrumented external service. It fails on purpose for some inputs:

- POST /v1/bookings returns 422 when amount_cents is above 5,000,000 (50,000.00).
- POST /v1/bookings returns 503 for currency GBP, whose pricing desk is "down".
- POST /v1/charges returns 422 for payment_method "tok_declined".
- GET /v1/fx-rates/{currency} returns 404 for a currency it has no rate for.

Every response carries an `X-Request-ID: prt_<16 hex digits>` header.

Run it by hand with: python partner.py --port 9100
"""

import argparse
import os
import secrets
import signal
import sys
import threading

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

BOOKING_LIMIT_CENTS = 5_000_000
HANDLING_FEE_CENTS = 1_500
SUPPORTED_CURRENCIES = {"EUR", "CHF", "GBP", "SEK", "USD"}
UNAVAILABLE_CURRENCIES = {"GBP"}
DECLINED_PAYMENT_METHOD = "tok_declined"
EUR_EXCHANGE_RATES = {"CHF": "0.9412", "GBP": "0.8571", "SEK": "11.5200", "USD": "1.0845"}

app = FastAPI(title="Fake partner API")


class BookingRequest(BaseModel):
    quote_ref: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class ChargeRequest(BaseModel):
    reference: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    payment_method: str = Field(min_length=1, max_length=64)


def error_response(status_code: int, error: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"error": error, "message": message})


@app.middleware("http")
async def add_request_id(request: Request, call_next):
    response = await call_next(request)
    response.headers["X-Request-ID"] = f"prt_{secrets.token_hex(8)}"
    return response


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@app.post("/v1/bookings", status_code=201)
async def create_booking(booking: BookingRequest):
    if booking.currency in UNAVAILABLE_CURRENCIES:
        return error_response(503, "desk_unavailable", f"the {booking.currency} pricing desk is unavailable")
    if booking.currency not in SUPPORTED_CURRENCIES:
        return error_response(422, "unsupported_currency", f"currency {booking.currency} is not supported")
    if booking.amount_cents > BOOKING_LIMIT_CENTS:
        return error_response(422, "amount_over_limit", "amount exceeds the booking limit of 50000.00")

    return {
        "booking_id": f"bk_{secrets.token_hex(6)}",
        "quote_ref": booking.quote_ref,
        "price_cents": booking.amount_cents + HANDLING_FEE_CENTS,
        "currency": booking.currency,
    }


@app.post("/v1/charges", status_code=201)
async def create_charge(charge: ChargeRequest):
    if charge.payment_method == DECLINED_PAYMENT_METHOD:
        return error_response(422, "card_declined", "the payment method was declined")

    return {
        "charge_id": f"ch_{secrets.token_hex(6)}",
        "reference": charge.reference,
        "amount_cents": charge.amount_cents,
        "currency": charge.currency,
        "status": "succeeded",
    }


@app.get("/v1/fx-rates/{currency}")
async def read_exchange_rate(currency: str):
    rate = EUR_EXCHANGE_RATES.get(currency.upper())
    if rate is None:
        return error_response(404, "unknown_currency", f"no exchange rate for {currency}")
    return {"base": "EUR", "currency": currency.upper(), "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake partner API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when standard input reaches its end, which happens when the process that started this one exits",
    )
    args = parser.parse_args()
    if args.exit_with_parent:
        threading.Thread(target=_stop_at_end_of_input, name="parent-watch", daemon=True).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def _stop_at_end_of_input() -> None:
    # The parent keeps the write end of our stdin open. When it exits, even by
    # SIGKILL, the pipe closes and this read returns. SIGTERM then lets
    # uvicorn shut down as usual.
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
