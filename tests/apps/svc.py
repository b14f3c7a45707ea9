"""A small unmodified FastAPI service that the launcher tests run under dtc-otel-run.

It never imports dtc_otel: everything the tests check comes from the wrapper.
"""

import logging
import os
import sys

import httpx
import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

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


@app.exception_handler(Exception)
async def catch_all(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", path=request.url.path, error=type(exc).__name__)

    return JSONResponse({"detail": "internal error"}, status_code=500)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]))
