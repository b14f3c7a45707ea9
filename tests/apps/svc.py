"""A small FastAPI service that the tests run under dtc-otel-run.

Apart from ``dtc_otel.bind`` for entity IDs, it does not use dtc_otel: every
span, header and log field the tests check comes from the wrapper.
"""

import asyncio
import logging
import os
import sys

import httpx
import psycopg
import structlog
from fastapi import BackgroundTasks, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

try:
    from dtc_otel import bind as dtc_otel_bind
except ImportError:  # the app also runs without dtc-otel installed
    def dtc_otel_bind(**entities: object) -> None:
        structlog.contextvars.bind_contextvars(**entities)

log = structlog.get_logger()
app = FastAPI()

# Created at import time, before any request, like most real services do.
shared_client = httpx.AsyncClient(timeout=5)

if os.environ.get("SVC_CONFIGURE_STRUCTLOG") == "1":
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )


def _self_url(request: Request, path: str) -> str:
    return f"http://127.0.0.1:{request.url.port}{path}"


@app.get("/pong")
async def pong() -> dict:
    return {"pong": True}


@app.get("/ping")
async def ping() -> dict:
    return {"ping": True}


@app.get("/slow-sql")
async def slow_sql() -> dict:
    async with await psycopg.AsyncConnection.connect(os.environ["SVC_DATABASE_URL"]) as conn:
        await conn.execute("SELECT pg_sleep(1.0)")
    return {"slept": True}


@app.get("/hello")
async def hello(request: Request) -> dict:
    log.info("hello called", quote_id=44)
    response = await shared_client.get(_self_url(request, "/pong"))
    row = None
    database_url = os.environ.get("SVC_DATABASE_URL")
    if database_url:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cursor = await conn.execute("SELECT %s::int + 1", (41,))
            row = (await cursor.fetchone())[0]
    logging.getLogger("svc.lib").warning("library line inside the request")

    return {"pong": response.json()["pong"], "row": row, "pid": os.getpid()}


@app.get("/sync")
def sync_route(request: Request) -> dict:
    response = httpx.get(_self_url(request, "/pong"), timeout=5)
    with httpx.Client(timeout=5) as client:
        second = client.send(client.build_request("GET", _self_url(request, "/pong")))
    log.info("sync route done")

    return {"status": [response.status_code, second.status_code]}


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def chunks():
        for index in range(50):
            yield f"chunk {index}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/boom")
async def boom() -> dict:
    raise RuntimeError("boom for the test")


@app.get("/partner/{status}")
async def call_partner(status: int) -> dict:
    """Call the partner stub, which responds with *status* and its own request ID."""
    dtc_otel_bind(quote_id=44)
    response = await shared_client.get(f"{os.environ['PARTNER_URL']}/status/{status}?token=secret-value")
    return {"partner_status": response.status_code, "seen": response.json() if response.status_code < 500 else None}


@app.get("/partner-down")
async def partner_down() -> dict:
    try:
        await shared_client.get("http://127.0.0.1:9/unreachable")
    except httpx.TransportError as exc:
        return {"error": type(exc).__name__}
    return {"error": None}


@app.get("/echo-outbound")
def echo_outbound() -> dict:
    """Return the headers the partner stub received from this service, sync style."""
    return httpx.get(f"{os.environ['PARTNER_URL']}/echo", timeout=5).json()


@app.get("/echo-outbound-async")
async def echo_outbound_async(host: str = "127.0.0.1") -> dict:
    base = os.environ["PARTNER_URL"].replace("127.0.0.1", host)
    return (await shared_client.get(f"{base}/echo")).json()


@app.get("/entity/{quote_id}")
async def entity(quote_id: int, background: BackgroundTasks) -> StreamingResponse:
    """Bind quote_id, then log from a thread, a task, a background task and a stream."""
    dtc_otel_bind(quote_id=quote_id)
    log.info("entity bound")
    await asyncio.sleep(0.05)

    def in_thread() -> None:
        log.info("entity in thread")

    await run_in_threadpool(in_thread)

    async def in_task() -> None:
        await asyncio.sleep(0.01)
        log.info("entity in task")

    await asyncio.create_task(in_task())
    background.add_task(lambda: log.info("entity in background"))
    outbound = (await shared_client.get(f"{os.environ['PARTNER_URL']}/echo")).json()

    async def chunks():
        for index in range(3):
            await asyncio.sleep(0.01)
            log.info("entity in stream", chunk=index)
            yield f"{index}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain", background=background, headers={"x-baggage-seen": outbound.get("baggage", "")})


if os.environ.get("SVC_WEBHOOK_SECRET"):
    from fastapi import Depends

    from dtc_otel.audit import StripeSignatureVerifier, WebhookDelivery, WebhookReceiver, enqueue, job

    payments = WebhookReceiver("payments", StripeSignatureVerifier(os.environ["SVC_WEBHOOK_SECRET"]), max_body_bytes=2048)

    from dtc_otel.live import Broadcaster, events_router

    async def allow_all(request: Request, topics: list[str]) -> bool:
        return True

    app.include_router(events_router(Broadcaster(), authorize=allow_all))

    @app.post("/webhooks/payments")
    async def payments_webhook(delivery: WebhookDelivery = Depends(payments)) -> dict:
        if delivery.duplicate:
            return {"status": "duplicate"}
        dtc_otel_bind(quote_id=delivery.json["data"]["quote_id"])
        if delivery.event_type == "explode":
            raise RuntimeError("handler failed on purpose")
        return {"status": "processed"}

    @app.post("/leak")
    async def leak(request: Request) -> dict:
        """Push every secret of the test corpus through every output the library has."""
        import json
        from pathlib import Path

        from opentelemetry import trace as otel_trace

        corpus = json.loads(Path(os.environ["SVC_SECRETS_FILE"]).read_text())
        values, keyed = corpus["values"], corpus["keyed"]
        span = otel_trace.get_current_span()
        for index, value in enumerate(values):
            log.info(f"message carrying {value}", detail=value, nested={"inner": value})
            span.set_attribute(f"app.value.{index}", value)
        log.info("keyed fields", **keyed)
        logging.getLogger("svc.lib").warning("stdlib line with %s", values[0])
        for key, value in keyed.items():
            span.set_attribute(key, value)
        try:
            raise ValueError(f"failed with {values[0]} and {values[1]}")
        except ValueError as exc:
            log.exception("operation failed")
            span.record_exception(exc)
        port = request.url.port
        await shared_client.get(
            f"http://app:{corpus['url_password']}@127.0.0.1:{port}/pong?X-Amz-Signature={corpus['url_signature']}&token={corpus['url_token']}"
        )
        dtc_otel_bind(quote_id=77)
        job_id = enqueue("leak_job", {"values": values[:12], **keyed})
        try:
            async with job("leak_job", job_id=job_id, payload={}):
                raise RuntimeError(f"job failed with {values[2]}")
        except RuntimeError:
            pass
        log.info("large payload", payload={"id": 9, "status": "new", "blob": "x" * 5000})
        return {"ok": True}

    @app.post("/jobs/{quote_id}")
    async def run_job(quote_id: int) -> dict:
        dtc_otel_bind(quote_id=quote_id)
        job_id = enqueue("approve_quote", {"quote_id": quote_id})
        async with job("approve_quote", job_id=job_id, payload={"quote_id": quote_id}):
            log.info("job ran")
        return {"job_id": job_id}


@app.exception_handler(Exception)
async def catch_all(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", path=request.url.path, error=type(exc).__name__)

    return JSONResponse({"detail": "internal error"}, status_code=500)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]))
