"""A FastAPI service with the live events router, run by the tests under dtc-otel-run.

Topics starting with ``secret:`` are refused; everything else may be followed.
"""

import os

import uvicorn
from fastapi import FastAPI, Request

from dtc_otel.live import Broadcaster, events_router

broadcaster = Broadcaster(heartbeat_seconds=float(os.environ.get("LIVE_HEARTBEAT_SECONDS", "10")))


async def authorize(request: Request, topics: list[str]) -> bool:
    return not any(topic.startswith("secret:") for topic in topics)


app = FastAPI()
app.include_router(
    events_router(
        broadcaster,
        authorize=authorize,
        ping_seconds=float(os.environ.get("LIVE_PING_SECONDS", "15")),
        max_stream_seconds=float(os.environ.get("LIVE_MAX_STREAM_SECONDS", "3600")),
        send_timeout=float(os.environ.get("LIVE_SEND_TIMEOUT", "30")),
    )
)


@app.get("/live-stats")
async def live_stats() -> dict:
    return {"subscribers": broadcaster.subscriber_count, "connected": broadcaster.stats.connected}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]))
