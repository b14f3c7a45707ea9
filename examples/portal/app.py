"""Customer portal example: quotes, invoices and payments on FastAPI, Postgres and a partner API.

This is a plain application that does not import dtc_otel. Run it as
`dtc-otel-run python examples/portal/app.py --demo` to see it instrumented from outside,
or as `python examples/portal/app.py` without instrumentation.
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

import db
import embedded_pg
import partner_client
import partner_process
import routes

DATABASE_URL_ENV = "DTC_OTEL_DATABASE_URL"

log = structlog.get_logger()


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Start the partner API and the database for the app's lifetime. Stop them in reverse order."""
    async with AsyncExitStack() as stack:
        app.state.partner_url = await stack.enter_async_context(partner_process.run_partner())
        stack.push_async_callback(partner_client.http_client.aclose)

        database_url = os.environ.get(DATABASE_URL_ENV)
        if not database_url:
            data_dir = embedded_pg.default_data_dir()
            database_url = await stack.enter_async_context(embedded_pg.embedded_postgres_url(data_dir))

        app.state.db_pool = await stack.enter_async_context(db.open_pool(database_url))
        # main() sets reset_seed_data for --demo. Other runs keep existing rows.
        await db.create_schema_and_seed(app.state.db_pool, reset=getattr(app.state, "reset_seed_data", False))

        log.info("portal started", embedded_database=not os.environ.get(DATABASE_URL_ENV))
        yield
        log.info("portal stopping")


app = FastAPI(title="Customer portal", lifespan=lifespan)
app.include_router(routes.router)


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
