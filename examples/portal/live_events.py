"""The portal's only use of dtc_otel.live: quote states published as events, served at GET /events.

Publishing needs dtc_otel and the audit trail, because each state is an
``audit_events`` row written in the caller's transaction. Serving the stream
also needs FastAPI's sse-starlette (``pip install 'dtc-otel[live]'``). Without
them the portal still runs: nothing is published and /events is not mounted,
so the live quote page shows its state at load time and reports that live
updates are off.

Who may follow what is decided by :func:`authorize`. The viewer comes from
the query string (``?customer_id=7``, or ``?support=1`` for support staff),
which is a stand-in for the session of a real login: anyone can claim any
customer ID here.
"""

import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request

import audit_hooks
import db

try:
    from dtc_otel import live
except ImportError:
    live = None

try:
    from dtc_otel.live import events_router
except ImportError:
    # dtc_otel is missing, or the router's sse-starlette is.
    events_router = None

EVENTS_PATH = "/events"
# How long startup waits for the first LISTEN. Streams opened earlier still
# get every event, because the page resumes from the ID it loaded with.
LISTEN_READY_TIMEOUT_SECONDS = 5.0

# Quote states published on topic quote:<id>, in the order a quote goes through them.
PAYMENT_INTENT_READY = "payment_intent_ready"
PAYMENT_RECORDING = "payment_recording"
PAYMENT_FAILED = "payment_failed"
PART_PAID = "part_paid"
PAID = "paid"
READY_TO_PAY = "ready_to_pay"
PREPARATION_FAILED = "preparation_failed"
PAYMENT_STATES = (PAYMENT_RECORDING, PAYMENT_FAILED, PART_PAID, PAID)
JOB_STATES = (READY_TO_PAY, PREPARATION_FAILED)

log = structlog.get_logger()

# The process's listener, created with the stream's router by the first start().
_broadcaster: Any = None
# True from start() until the app's lifespan ends.
_serving = False


@dataclass(frozen=True)
class Viewer:
    """The viewer of a page or stream: one customer, or support staff."""

    customer_id: int | None
    support: bool

    def may_follow_customer(self, customer_id: int) -> bool:
        return self.support or self.customer_id == customer_id

    def describe(self) -> str:
        return "support" if self.support else f"customer {self.customer_id}"


class ViewerError(ValueError):
    """Raised when the query string names no valid viewer."""


def viewer_from_request(request: Request) -> Viewer:
    """Read the viewer from ``?customer_id=`` or ``?support=1``; a demo stand-in for a login.

    Raises:
        ViewerError: neither is given, or customer_id is not a positive integer.
    """
    if request.query_params.get("support") == "1":
        return Viewer(customer_id=None, support=True)

    raw = request.query_params.get("customer_id")
    if raw is None or raw == "":
        raise ViewerError("missing viewer: add ?customer_id=7 to the URL, or ?support=1 for the support view")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) == 0:
        raise ViewerError(f"invalid customer_id {raw[:20]!r}: expected a positive integer such as 7")

    return Viewer(customer_id=int(raw), support=False)


def _topic_id(topic: str, kind: str) -> int | None:
    prefix, _, raw = topic.partition(":")
    if prefix != kind or not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return None
    return int(raw)


async def authorize(request: Request, topics: list[str]) -> bool:
    """Return True when the viewer may follow every topic: their own quotes and customer topic.

    Support may follow the quote and customer topics of every customer. No viewer
    may follow ``*`` or any other kind of topic.
    """
    try:
        viewer = viewer_from_request(request)
    except ViewerError as exc:
        log.info("live stream denied", reason=str(exc), topics=topics)
        return False

    pool = request.app.state.db_pool
    for topic in topics:
        customer_id = _topic_id(topic, "customer")
        if customer_id is None:
            quote_id = _topic_id(topic, "quote")
            customer_id = None if quote_id is None else await db.fetch_quote_customer_id(pool, quote_id)
        if customer_id is None or not viewer.may_follow_customer(customer_id):
            log.info("live stream denied", viewer=viewer.describe(), topic=topic)
            return False

    return True


def publishing_enabled() -> bool:
    """Return whether published states are written: dtc_otel.live is installed and the audit trail is on."""
    return live is not None and audit_hooks.enabled


def serving_enabled() -> bool:
    """Return whether start() mounted the stream and started its listener."""
    return _serving


async def publish_quote_state(conn: Any, quote_id: int, state: str, **entity_ids: int) -> None:
    """Publish *state* on topic quote:<quote_id> in *conn*'s current transaction.

    Does nothing while publishing is off. The event carries *entity_ids* as
    well, so it also reaches the followers of ``customer:<id>``.
    """
    if not publishing_enabled():
        return
    await live.apublish(conn, f"quote:{quote_id}", state, entity_ids={"quote_id": quote_id, **entity_ids})


async def announce_payment(conn: Any, invoice: db.Invoice) -> None:
    """Publish paid or part_paid for *invoice* in the transaction that recorded its payment."""
    state = PAID if invoice.status == "paid" else PART_PAID
    await publish_quote_state(conn, invoice.quote_id, state, customer_id=invoice.customer_id, invoice_id=invoice.id)


async def publish_quote_state_now(pool: Any, quote_id: int, state: str, **entity_ids: int) -> None:
    """Publish *state* in a transaction of its own, for progress that has no business change to join.

    A failed write is logged and not raised, because it only delays what the
    page shows; the business change goes ahead.
    """
    if not publishing_enabled():
        return
    try:
        async with pool.connection() as conn, conn.transaction():
            await publish_quote_state(conn, quote_id, state, **entity_ids)
    except psycopg.Error as exc:
        log.warning(
            "quote state not published", quote_id=quote_id, state=state, error_type=type(exc).__qualname__
        )


async def start(app: FastAPI, stack: AsyncExitStack, database_url: str) -> bool:
    """Start the LISTEN connection and mount GET /events; return whether live events are served.

    Call it in the lifespan after the audit trail is configured: the router
    is mounted only when the trail is on, which is known only then. The
    listener stops when *stack* closes.
    """
    global _broadcaster, _serving
    if events_router is None:
        log.info("live events off", reason="dtc_otel.live or sse-starlette is not installed")
        return False
    if not audit_hooks.enabled:
        log.info("live events off", reason="the audit trail is off")
        return False

    if _broadcaster is None:
        # One listener per process. NOTE: a second lifespan in the same process
        # (as in tests that start the app twice) reuses the first database URL.
        _broadcaster = live.Broadcaster(
            # A pooled DTC_OTEL_DATABASE_URL cannot carry LISTEN; docs/live.md explains the setting.
            os.environ.get(live.LISTEN_URL_ENV) or database_url,
            database_url=database_url,
            schema=audit_hooks.schema,
        )
        # Routes may be added while the app runs, because Starlette looks them up per request.
        app.include_router(events_router(_broadcaster, authorize=authorize, path=EVENTS_PATH))

    await stack.enter_async_context(_broadcaster)
    _serving = True
    stack.callback(_stop_serving)
    if not await _broadcaster.wait_ready(LISTEN_READY_TIMEOUT_SECONDS):
        log.warning("live events listener not connected yet", timeout_seconds=LISTEN_READY_TIMEOUT_SECONDS)
    log.info("live events on", path=EVENTS_PATH, schema=audit_hooks.schema)
    return True


def _stop_serving() -> None:
    global _serving
    _serving = False
