"""The trivial FastAPI app that the HTTP overhead benchmark serves.

One async GET endpoint returns a small JSON object and logs one structlog
line. The app configures structlog itself (JSON lines to stdout), so every
variant of the benchmark renders its log lines the same way. Under
dtc-otel-run, dtc-otel inserts its trace-ID processor into this chain. The app
does not import dtc_otel.
"""

from __future__ import annotations

import logging
import sys

import structlog
from fastapi import FastAPI

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(),
    ],
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    logger_factory=structlog.WriteLoggerFactory(sys.stdout),
    cache_logger_on_first_use=True,
)

logger = structlog.get_logger()

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, object]:
    logger.info("item read", item_id=item_id)
    return {"item_id": item_id, "status": "ok"}
