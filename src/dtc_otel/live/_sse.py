"""``events_router``: live events as Server-Sent Events, built on sse-starlette.

``GET /events?topic=quote:44&topic=customer:7`` streams every event on
those topics. Each SSE event has ``id`` = the ``audit_events`` ID, ``event``
= ``state`` for ``publish()`` events or the audit table's name, and ``data``
= the JSON payload. A client that reconnects with ``Last-Event-ID`` (header,
or ``last_event_id`` in the query) first receives what it missed, read from
``audit_events``, then the live events.

The stream runs inside the request's server span, so its log lines carry
the stream's own trace ID, and the span ends when the stream ends. No span
is opened per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union

import anyio
import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.responses import Response

from dtc_otel._ratelimit import log_once_per_interval
from dtc_otel.live._broadcaster import ALL_TOPICS, Broadcaster, shared_broadcaster
from dtc_otel.live._events import IdWindow, LiveEvent, Resync
from dtc_otel.live._subscription import Subscription

__all__ = ["Authorize", "events_router"]

_logger = logging.getLogger("dtc_otel.live")

Authorize = Callable[[Request, list[str]], Union[bool, Awaitable[bool]]]
BroadcasterSource = Union[Broadcaster, Callable[[], Broadcaster], None]

_MAX_TOPIC_LENGTH = 200
# The most one write to a client carries. A stream that wakes with many
# events queued sends them together, because each write costs a task
# switch, the ASGI layers and a system call whatever its size.
_MAX_CHUNK_BYTES = 64 * 1024
# Encoded events kept for the streams still sending them. Followers take an
# event within a fraction of a second, so the newest few hundred are enough.
_FRAME_CACHE_SIZE = 512
# How far below its newest event ID, in IDs, a stream still distinguishes a
# repeated event from a new one. A refill re-reads the broadcaster's
# reread_span below the last delivered event, so the window spans at least
# four times that. Each stream keeps one bit per ID: 512 bytes for 4,096 IDs.
# A set of recent IDs cost about 100 bytes per ID and grew until it was full,
# 2 GiB for 1,000 streams at 20,000 IDs each (benchmarks/live_latency.py).
_MIN_SENT_SPAN = 4_096


@dataclass(frozen=True)
class _Options:
    ping_seconds: float
    send_timeout: float
    max_topics: int
    max_stream_seconds: float
    max_replay: int
    retry_ms: int
    max_queue: int | None


class _Source:
    """The broadcaster behind a router: an instance, a factory called once, or the shared one."""

    def __init__(self, source: BroadcasterSource) -> None:
        if source is not None and not isinstance(source, Broadcaster) and not callable(source):
            raise TypeError(
                f"invalid broadcaster {source!r}: pass a Broadcaster, a function returning one, or None for the shared one"
            )
        self._source = source
        self._created: Broadcaster | None = None

    def get(self) -> Broadcaster:
        if self._source is None:
            return shared_broadcaster()
        if isinstance(self._source, Broadcaster):
            return self._source
        if self._created is None:
            created = self._source()
            if not isinstance(created, Broadcaster):
                raise TypeError(f"the broadcaster factory returned {type(created).__name__}, expected a Broadcaster")
            self._created = created

        return self._created

    def started(self) -> Broadcaster | None:
        """Return the broadcaster if one was made, without making one."""
        if self._source is None or isinstance(self._source, Broadcaster):
            return self.get()

        return self._created


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _parse_topics(request: Request, max_topics: int) -> list[str] | JSONResponse:
    raw = request.query_params.getlist("topic")
    if not raw:
        return _error(
            400,
            "missing topic: pass ?topic=quote:44, repeated for more topics, "
            "or ?topic=* for every event where the server allows it",
        )
    if len(raw) > max_topics:
        return _error(400, f"too many topics: {len(raw)} given, at most {max_topics} per stream")
    for topic in raw:
        if not topic or len(topic) > _MAX_TOPIC_LENGTH or not topic.isprintable():
            return _error(
                400, f"invalid topic {topic[:60]!r}: expected printable text of 1 to {_MAX_TOPIC_LENGTH} characters"
            )

    return sorted(set(raw))


def _parse_last_event_id(request: Request) -> int | None | JSONResponse:
    # The header wins: a browser sends it on every automatic reconnect, so it
    # is newer than a last_event_id written into the URL at the first connect.
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return _error(400, f"invalid Last-Event-ID {raw[:40]!r}: expected the id of an earlier event, such as 1234")

    return int(raw)


def _encode(event: LiveEvent) -> bytes:
    data = json.dumps(event.payload(), default=str, separators=(",", ":"))

    return ServerSentEvent(data=data, id=str(event.id), event=event.name).encode()


def _encode_resync(resync: Resync) -> bytes:
    return ServerSentEvent(data=json.dumps(resync.payload(), separators=(",", ":")), event=resync.name).encode()


class _Frames:
    """Encoded events by ID, shared by a router's streams, so an event is encoded once, not once per stream."""

    def __init__(self, size: int = _FRAME_CACHE_SIZE) -> None:
        self._size = size
        self._frames: dict[int, bytes] = {}

    def get(self, event: LiveEvent) -> bytes:
        frame = self._frames.get(event.id)
        if frame is None:
            frame = _encode(event)
            if len(self._frames) >= self._size:
                # Dicts keep insertion order: the first key is the oldest event.
                del self._frames[next(iter(self._frames))]
            self._frames[event.id] = frame

        return frame


class _LiveResponse(EventSourceResponse):
    """An EventSourceResponse that bounds a blocked write with one timer per stream.

    sse-starlette's own ``send_timeout`` arms a timer for every write. With a
    thousand streams those cancelled timers, one per event and stream, lived
    long enough to fill the old generation and trigger full garbage
    collections of 150-200 ms (benchmarks/live_latency.py on two cores).
    Here one check per stream runs every quarter of the timeout instead, so
    a stuck write ends the stream after one to 1.25 times *write_timeout*.
    """

    def __init__(
        self, content: AsyncIterator[bytes], *, write_timeout: float, on_timeout: Callable[[], None], **options: Any
    ) -> None:
        super().__init__(content, send_timeout=None, **options)
        self._write_timeout = write_timeout
        self._on_timeout = on_timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        blocked_since: float | None = None

        async def watched_send(message: Any) -> None:
            nonlocal blocked_since
            blocked_since = loop.time()
            try:
                await send(message)
            finally:
                blocked_since = None

        with anyio.CancelScope() as scope_of_stream:

            def check() -> None:
                nonlocal timer
                if blocked_since is not None and loop.time() - blocked_since >= self._write_timeout:
                    self._on_timeout()
                    scope_of_stream.cancel()
                    return
                timer = loop.call_later(self._write_timeout / 4, check)

            timer = loop.call_later(self._write_timeout / 4, check)
            try:
                await super().__call__(scope, receive, watched_send)
            finally:
                timer.cancel()


class _Stream:
    """One client's stream: replay from the log, then live events, until it ends.

    It yields encoded bytes. Each wake-up sends every event that is waiting
    in one write of up to ``_MAX_CHUNK_BYTES``, so a burst costs one write
    per stream rather than one per event.
    """

    def __init__(
        self,
        broadcaster: Broadcaster,
        topics: list[str],
        last_event_id: int | None,
        options: _Options,
        frames: _Frames | None = None,
    ) -> None:
        self.broadcaster = broadcaster
        self.topics = topics
        self.followed = None if ALL_TOPICS in topics else frozenset(topics)
        self.last_event_id = last_event_id
        self.options = options
        self.frames = frames or _Frames()
        self.sent = 0
        self.sent_ids = IdWindow(max(_MIN_SENT_SPAN, 4 * broadcaster.reread_span))
        self.reason: str | None = None

    async def on_client_close(self, message: Any) -> None:
        self.reason = "client_disconnected"

    def on_send_timeout(self) -> None:
        self.reason = self.reason or "send_timeout"

    async def _replay(self, after_id: int) -> tuple[list[LiveEvent], Resync | None]:
        """Read the events after *after_id* not yet sent; return them and a Resync if some are missing."""
        try:
            events, complete = await self.broadcaster.read_events(
                self.followed, after_id, max_events=self.options.max_replay
            )
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log_once_per_interval(_logger, "live stream could not read missed events from the log", error=type(exc).__name__)
            return [], Resync(after_id, "log_unreadable")

        fresh = [event for event in events if self.sent_ids.add(event.id)]
        if complete:
            return fresh, None

        return fresh, Resync(events[-1].id if events else after_id, "too_far_behind")

    def _expire(self, subscription: Subscription) -> None:
        # Closing the subscription ends the wait in events(). A timeout
        # around each wait would cost a timer per event instead of one per stream.
        self.reason = self.reason or "max_stream_seconds"
        subscription.close()

    async def events(self) -> AsyncIterator[bytes]:
        started = time.monotonic()
        # Subscribe before reading the log, so nothing committed in between is missed.
        subscription = self.broadcaster.subscribe(self.topics, max_queue=self.options.max_queue)
        # The client reconnects with Last-Event-ID; this bounds how long a
        # stream to a vanished client can hold its subscription.
        expiry = asyncio.get_running_loop().call_later(self.options.max_stream_seconds, self._expire, subscription)
        # A gap before this stream's first event is refilled from here, not from older events.
        floor = self.last_event_id if self.last_event_id is not None else self.broadcaster.last_id
        _logger.info(
            "live stream opened",
            extra={"topics": ",".join(self.topics), "last_event_id": self.last_event_id},
        )
        try:
            yield ServerSentEvent(comment="live", retry=self.options.retry_ms).encode()
            if self.last_event_id is not None:
                async with contextlib.aclosing(self._send_replay(self.last_event_id)) as replayed:
                    async for chunk in replayed:
                        yield chunk
            # The live loop sits in this generator rather than a nested one:
            # each level of generators adds objects to every wait.
            while True:
                frames, gap = self._take_waiting(subscription)
                if frames:
                    yield b"".join(frames)
                if gap is not None:
                    # The queue overflowed: refill the gap from the log.
                    last_delivered = gap.after_id if gap.after_id is not None else floor
                    after = max(floor, last_delivered - self.broadcaster.reread_span)
                    async with contextlib.aclosing(self._send_replay(after)) as replayed:
                        async for chunk in replayed:
                            yield chunk
                elif not frames:
                    if subscription.closed:
                        self.reason = self.reason or "broadcaster_stopped"
                        return
                    await subscription.wait()
        except asyncio.CancelledError:
            self.reason = self.reason or ("server_shutdown" if AppStatus.should_exit else "cancelled")
            raise
        finally:
            expiry.cancel()
            subscription.close()
            _logger.info(
                "live stream closed",
                extra={
                    "topics": ",".join(self.topics),
                    "events_sent": self.sent,
                    "duration_s": round(time.monotonic() - started, 3),
                    "reason": self.reason or "closed",
                },
            )

    def _take_waiting(self, subscription: Subscription) -> tuple[list[bytes], Resync | None]:
        """Take waiting events up to one chunk; stop early at a Resync and return it."""
        frames: list[bytes] = []
        size = 0
        while size < _MAX_CHUNK_BYTES:
            item = subscription.get_nowait()
            if item is None:
                break
            if isinstance(item, Resync):
                return frames, item
            if self.sent_ids.add(item.id):
                frame = self.frames.get(item)
                frames.append(frame)
                size += len(frame)
                self.sent += 1

        return frames, None

    async def _send_replay(self, after_id: int) -> AsyncIterator[bytes]:
        events, gap = await self._replay(after_id)
        chunk: list[bytes] = []
        size = 0
        for event in events:
            frame = self.frames.get(event)
            chunk.append(frame)
            size += len(frame)
            self.sent += 1
            if size >= _MAX_CHUNK_BYTES:
                yield b"".join(chunk)
                chunk, size = [], 0
        if gap is not None:
            chunk.append(_encode_resync(gap))
        if chunk:
            yield b"".join(chunk)


def events_router(
    broadcaster_or_factory: BroadcasterSource,
    *,
    authorize: Authorize | None = None,
    path: str = "/events",
    ping_seconds: float = 15.0,
    send_timeout: float = 30.0,
    max_topics: int = 20,
    max_stream_seconds: float = 3600.0,
    max_replay: int = 5000,
    retry_ms: int = 2000,
    max_queue: int | None = None,
) -> APIRouter:
    """Return a FastAPI router serving live events at ``GET {path}?topic=...``.

    Args:
        broadcaster_or_factory: a :class:`Broadcaster`, a function that returns
            one (called at the first request or at startup), or None for
            :func:`shared_broadcaster`.
        authorize: ``authorize(request, topics)`` returns True (or an awaitable
            of True) when the caller may follow every one of *topics*; any other
            value gives 403. Required, so that no feed is public by accident.
        ping_seconds: keep-alive comment interval, at most 15 s so proxies
            and load balancers keep the connection open.
        send_timeout: seconds one write to the client may block before the
            stream is dropped.
        max_topics: topics one stream may follow.
        max_stream_seconds: a stream ends after this long and the client
            reconnects with ``Last-Event-ID``, so a client that vanished without
            a TCP reset keeps its subscription for at most this long.
        max_replay: log rows a resume reads at most; beyond that the client
            gets a ``resync`` event.
        retry_ms: reconnect delay sent to the client with the first message.
        max_queue: events each stream may have waiting; default the broadcaster's.

    Raises:
        ValueError: *authorize* is missing, or a limit is out of range.
    """
    if authorize is None:
        raise ValueError(
            "events_router() needs authorize=: a function (request, topics) -> bool that returns True when "
            "the caller may follow those topics, for example authorize=lambda request, topics: "
            "all(t.startswith(f'customer:{request.state.customer_id}') for t in topics)"
        )
    if not callable(authorize):
        raise ValueError(f"invalid authorize {authorize!r}: expected a function (request, topics) -> bool")
    if not 0 < ping_seconds <= 15:
        raise ValueError(f"invalid ping_seconds {ping_seconds}: expected more than 0 and at most 15")
    if send_timeout <= 0 or max_stream_seconds <= 0 or max_topics < 1 or max_replay < 1 or retry_ms < 0:
        raise ValueError(
            "invalid limits: send_timeout and max_stream_seconds must be above 0, max_topics and max_replay "
            f"at least 1, retry_ms at least 0; got {send_timeout}, {max_stream_seconds}, {max_topics}, "
            f"{max_replay}, {retry_ms}"
        )

    source = _Source(broadcaster_or_factory)
    options = _Options(ping_seconds, send_timeout, max_topics, max_stream_seconds, max_replay, retry_ms, max_queue)
    frames = _Frames()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await _start(source)
        yield
        broadcaster = source.started()
        if broadcaster is not None:
            await broadcaster.stop()

    router = APIRouter(lifespan=lifespan)

    async def stream_events(request: Request) -> Response:
        topics = _parse_topics(request, options.max_topics)
        if isinstance(topics, JSONResponse):
            return topics
        last_event_id = _parse_last_event_id(request)
        if isinstance(last_event_id, JSONResponse):
            return last_event_id

        allowed = authorize(request, topics)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if allowed is not True:
            return _error(403, "not allowed to follow these topics: " + ", ".join(topics))

        broadcaster = await _start(source)
        if broadcaster is None:
            return _error(503, "live events are not configured on this server; see its log")

        stream = _Stream(broadcaster, topics, last_event_id, options, frames)
        return _LiveResponse(
            stream.events(),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            ping=options.ping_seconds,
            write_timeout=options.send_timeout,
            on_timeout=stream.on_send_timeout,
            client_close_handler_callable=stream.on_client_close,
        )

    router.add_api_route(
        path,
        stream_events,
        methods=["GET"],
        responses={200: {"content": {"text/event-stream": {}}, "description": "a stream of events"}},
        summary="Follow live events",
        description=(
            "Server-Sent Events for the given topics (repeat ?topic=). "
            "Resume with the Last-Event-ID header or ?last_event_id=."
        ),
    )

    return router


async def _start(source: _Source) -> Broadcaster | None:
    """Return the started broadcaster, or None when it cannot start; a failure is logged, not raised."""
    try:
        broadcaster = source.get()
        await broadcaster.start()
    except (ValueError, TypeError) as exc:
        log_once_per_interval(_logger, "live events are off", level=logging.ERROR, error=str(exc))
        return None

    return broadcaster
