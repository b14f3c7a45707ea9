"""GET /quotes/{quote_id}/live: a page whose badges follow the quote's events without a reload.

The page itself is a static shell (live_page.html, inline CSS and JavaScript, no
build step). Its script reads the quote's state from
``GET /quotes/{quote_id}/live/state`` and then follows ``GET /events?topic=quote:<id>``
with ``EventSource``, resuming after the last event ID that the state was
read with. Both requests carry the page's ``?customer_id=`` or ``?support=1``,
and both are checked the same way (see live_events.authorize).
"""

from pathlib import Path

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from psycopg import sql
from psycopg.rows import class_row

import audit_hooks
import db
import live_events

PAGE_TEMPLATE = (Path(__file__).parent / "live_page.html").read_text(encoding="utf-8")

log = structlog.get_logger()
router = APIRouter()


@router.get("/quotes/{quote_id}/live", response_class=HTMLResponse)
async def live_quote_page(quote_id: int) -> HTMLResponse:
    """Return the page shell; its script loads the state and checks the viewer."""
    page = PAGE_TEMPLATE.replace("{{quote_id}}", str(quote_id))
    # The page follows a stream, so a cached copy is never what the viewer wants.
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.get("/quotes/{quote_id}/live/state")
async def live_quote_state(quote_id: int, request: Request):
    """Return the quote's badges as of now and the last event ID to resume the stream from."""
    try:
        viewer = live_events.viewer_from_request(request)
    except live_events.ViewerError as exc:
        return JSONResponse(status_code=401, content={"detail": str(exc)})

    pool = request.app.state.db_pool
    state = await read_state(pool, quote_id)
    if state is None:
        log.info("quote not found", quote_id=quote_id)
        return JSONResponse(status_code=404, content={"detail": f"quote {quote_id} not found"})
    if not viewer.may_follow_customer(state["customer_id"]):
        log.info("live quote page denied", quote_id=quote_id, viewer=viewer.describe())
        return JSONResponse(
            status_code=403, content={"detail": f"{viewer.describe()} may not view quote {quote_id}"}
        )

    state["viewer"] = viewer.describe()
    return state


async def read_state(pool, quote_id: int) -> dict | None:
    """Read the quote, its invoice and its latest published states from one snapshot.

    ``last_event_id`` is the newest ``audit_events`` ID in the same snapshot,
    so a stream that resumes after it misses no event committed later.
    Returns None when the quote does not exist.
    """
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        published = live_events.publishing_enabled()
        last_event_id = await _last_event_id(conn) if published else None

        quote_cur = conn.cursor(row_factory=class_row(db.Quote))
        await quote_cur.execute(
            "SELECT q.id, q.customer_id, q.amount_cents, q.currency, q.discount_code, q.status,"
            " q.partner_booking_id, q.updated_at, i.id AS invoice_id"
            " FROM quotes q LEFT JOIN invoices i ON i.quote_id = q.id WHERE q.id = %s",
            (quote_id,),
        )
        quote = await quote_cur.fetchone()
        if quote is None:
            return None

        invoice = None
        if quote.invoice_id is not None:
            invoice_cur = conn.cursor(row_factory=class_row(db.Invoice))
            await invoice_cur.execute(db.INVOICE_QUERY, (quote.invoice_id,))
            invoice = await invoice_cur.fetchone()

        payment_state = job_state = None
        if published:
            payment_state = await _latest_state(conn, quote_id, live_events.PAYMENT_STATES)
            job_state = await _latest_state(conn, quote_id, live_events.JOB_STATES)

    return {
        "quote_id": quote.id,
        "customer_id": quote.customer_id,
        "quote_status": quote.status,
        "invoice_id": invoice.id if invoice else None,
        "amount_cents": invoice.amount_cents if invoice else quote.amount_cents,
        "open_cents": invoice.amount_cents - invoice.paid_cents if invoice else None,
        "currency": quote.currency,
        "payment": _payment(invoice, payment_state),
        "payment_intent_ready": invoice is not None,
        "jobs": _jobs(quote, job_state, published),
        "live": live_events.serving_enabled(),
        "events_path": live_events.EVENTS_PATH,
        "last_event_id": last_event_id,
    }


def _payment(invoice: db.Invoice | None, latest: str | None) -> str:
    if invoice is None:
        return "not_invoiced"
    if invoice.status == "paid":
        return live_events.PAID
    # A payment in progress or just failed shows until the next payment state.
    if latest in (live_events.PAYMENT_RECORDING, live_events.PAYMENT_FAILED):
        return latest
    if invoice.paid_cents > 0:
        return live_events.PART_PAID
    return "awaiting_payment"


def _jobs(quote: db.Quote, latest: str | None, published: bool) -> str:
    if quote.status == "pending":
        return "waiting"
    if latest is not None:
        return latest
    # Without published states, the end of the job chain cannot be seen.
    return "preparing" if published else "not_tracked"


async def _last_event_id(conn) -> int:
    query = sql.SQL("SELECT coalesce(max(id), 0) FROM {}.audit_events").format(sql.Identifier(audit_hooks.schema))
    row = await (await conn.execute(query)).fetchone()
    return int(row[0])


async def _latest_state(conn, quote_id: int, states: tuple[str, ...]) -> str | None:
    """Return the newest of *states* published on topic quote:<quote_id>, or None."""
    query = sql.SQL(
        "SELECT status FROM {}.audit_events WHERE topic = %s AND source_table = 'audit_events'"
        " AND status = ANY(%s) ORDER BY id DESC LIMIT 1"
    ).format(sql.Identifier(audit_hooks.schema))
    row = await (await conn.execute(query, (f"quote:{quote_id}", list(states)))).fetchone()
    return None if row is None else row[0]
