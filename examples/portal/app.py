"""Customer portal example: quotes, invoices and payments on FastAPI, Postgres and a partner API.

Run it as `dtc-otel-run python examples/portal/app.py --demo` to see it instrumented from
outside, or as `python examples/portal/app.py` without instrumentation. Its only imports of
dtc_otel are in entities.py, audit_hooks.py and live_events.py, and all fall back when dtc_otel
is missing.
"""

import argparse
import asyncio
import os
import sys
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import audit_hooks
import db
import embedded_pg
import live_events
import live_page
import partner_client
import partner_process
import payment_webhooks
import routes

DATABASE_URL_ENV = "DTC_OTEL_DATABASE_URL"
AUDIT_FLUSH_TIMEOUT_SECONDS = 5.0

log = structlog.get_logger()


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Start the partner API, the database and the audit trail for the app's lifetime. Stop them in reverse order."""
    async with AsyncExitStack() as stack:
        app.state.partner_url = await stack.enter_async_context(partner_process.run_partner())
        stack.push_async_callback(partner_client.http_client.aclose)

        database_url = os.environ.get(DATABASE_URL_ENV)
        app.state.embedded_database = not database_url
        if not database_url:
            data_dir = embedded_pg.default_data_dir()
            database_url = await stack.enter_async_context(embedded_pg.embedded_postgres_url(data_dir))
        app.state.database_url = database_url

        app.state.db_pool = await stack.enter_async_context(db.open_pool(database_url))
        # main() sets reset_seed_data for --demo. Other runs keep existing rows.
        await db.create_schema_and_seed(app.state.db_pool, reset=getattr(app.state, "reset_seed_data", False))
        # The embedded server's URL names its Unix socket directory; the audit writer uses it as it is.
        app.state.audit_enabled = await asyncio.to_thread(audit_hooks.configure, database_url)
        # Needs the audit trail, so it starts after it and its listener stops before the pool closes.
        app.state.live_enabled = await live_events.start(app, stack, database_url)

        log.info(
            "portal started",
            embedded_database=app.state.embedded_database,
            audit=app.state.audit_enabled,
            live=app.state.live_enabled,
        )
        yield
        log.info("portal stopping")
        # uvicorn has finished the background jobs by now. The embedded database stops
        # next, so the audit rows must be written before that.
        await asyncio.to_thread(audit_hooks.flush, AUDIT_FLUSH_TIMEOUT_SECONDS)


app = FastAPI(title="Customer portal", lifespan=lifespan)
app.include_router(routes.router)
app.include_router(payment_webhooks.router)
app.include_router(live_page.router)


@app.exception_handler(Exception)
async def handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response is sent, so uvicorn logs it too.
    log.exception("unhandled error", path=request.url.path, method=request.method, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the customer portal example.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=os.environ.get("PORT", "8000"),
        help="TCP port to listen on, 0 for any free port (default: $PORT, else 8000)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="start the portal, send a short scripted series of requests, print a summary to stderr and exit",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="put the seed quotes back to pending and delete their invoices and payments before serving",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app.state.reset_seed_data = args.reset
    if not args.demo:
        # uvicorn.run stops on SIGINT or SIGTERM and runs the lifespan shutdown first.
        uvicorn.run(app, host=args.host, port=args.port)
        return 0

    import demo

    app.state.reset_seed_data = True
    try:
        return asyncio.run(demo.run_demo(app, args.host, args.port))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
