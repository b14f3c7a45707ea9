"""Live events: ``audit_events`` NOTIFYs fanned out by topic, as Server-Sent Events.

* :func:`publish` / :func:`apublish` announce a state change on a topic,
  inside the caller's transaction.
* :class:`Broadcaster` keeps one LISTEN connection per process and delivers
  each event to the subscribers of its topic and of its entity IDs
  (``quote:44``, ``customer:7``), catching up from the table after a
  reconnect.
* :func:`events_router` serves ``GET /events?topic=...`` with sse-starlette,
  behind an authorization callback.

docs/live.md shows the wiring, the settings and the limits.
"""

from __future__ import annotations

from typing import Any

from dtc_otel.live._broadcaster import ALL_TOPICS, Broadcaster, BroadcasterStats, shared_broadcaster
from dtc_otel.live._events import LiveEvent, Resync, entity_topic, event_topics
from dtc_otel.live._publish import apublish, publish
from dtc_otel.live._settings import LISTEN_URL_ENV
from dtc_otel.live._subscription import Subscription

__all__ = [
    "ALL_TOPICS",
    "LISTEN_URL_ENV",
    "Broadcaster",
    "BroadcasterStats",
    "LiveEvent",
    "Resync",
    "Subscription",
    "apublish",
    "entity_topic",
    "event_topics",
    "events_router",
    "publish",
    "shared_broadcaster",
]


def __getattr__(name: str) -> Any:
    # The router needs FastAPI and sse-starlette, which only web apps install.
    if name == "events_router":
        from dtc_otel.live._sse import events_router

        return events_router
    raise AttributeError(f"module 'dtc_otel.live' has no attribute {name!r}")
