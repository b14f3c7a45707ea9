"""The broadcaster: one LISTEN connection per process, fanned out to subscribers by topic.

psycopg 3.3's ``AsyncConnection.notifies()`` holds the connection's lock
from its first iteration until the generator finishes, also while it is
paused at a ``yield``. Any other statement on that connection waits for the
lock, and a ``break`` out of ``async for`` leaves the generator, and so the
lock, until it is closed. The notifications of one network read that were
not yet yielded are also lost on a ``break``. So:

* one task owns the connection. It issues ``LISTEN`` once, on the one
  audit channel, and never again: subscribing and unsubscribing only change
  in-memory sets, so they never touch the connection;
* the task reads with ``notifies(timeout=...)``, which ends on its own after
  the timeout, and never breaks out of it;
* everything else that reads the database (truncated payloads, resume) uses
  a separate small pool, so nothing waits for the lock.

After a lost connection the task reconnects with backoff, listens again,
and catches up from ``audit_events`` by ID. Several writers can commit a
lower ID after a higher one, so the catch-up re-reads a range below the
highest ID seen and skips the IDs already delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from psycopg import sql
from tenacity import wait_exponential_jitter
from tenacity.wait import wait_base

from dtc_otel._ratelimit import log_once_per_interval
from dtc_otel.audit._events import NOTIFY_CHANNEL
from dtc_otel.live import _history
from dtc_otel.live._events import LiveEvent, RecentIds
from dtc_otel.live._settings import DATABASE_URL_ENV, LISTEN_URL_ENV, audit_schema, listen_url, read_url
from dtc_otel.live._subscription import Subscription

__all__ = ["ALL_TOPICS", "Broadcaster", "BroadcasterStats", "check_topics", "shared_broadcaster"]

_logger = logging.getLogger("dtc_otel.live")

# The topic that follows every event.
ALL_TOPICS = "*"

_MAX_TOPIC_LENGTH = 200

# TCP settings of the LISTEN connection. Keepalives (in seconds) fail an idle
# connection whose peer vanished after about idle + interval * count. The
# user timeout (in milliseconds) fails it when sent data, such as the
# heartbeat query, stays unacknowledged that long.
_TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}


@dataclass
class BroadcasterStats:
    """Counters of one broadcaster since it was created."""

    notifications: int = 0
    delivered: int = 0
    duplicates: int = 0
    caught_up: int = 0
    truncated: int = 0
    invalid: int = 0
    reconnects: int = 0
    gaps: int = 0
    connected: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RetryState:
    """The one field of tenacity's retry state that its wait strategies read."""

    def __init__(self, attempt: int) -> None:
        self.attempt_number = attempt


def _background_context() -> contextvars.Context:
    """Return an empty context with instrumentation suppressed, for the listener task.

    Started from a request, the task would otherwise inherit that request's
    span: its queries would become the request's child spans and its log
    lines would carry the request's trace ID for the life of the process.
    """
    context = contextvars.Context()
    context.run(lambda: otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True)))

    return context


def check_topics(topics: Iterable[str] | None) -> frozenset[str] | None:
    """Return *topics* as a set, or None for every event (``None`` or ``"*"``).

    Raises:
        TypeError: a single string was passed instead of a list.
        ValueError: no topics, or a topic is empty or over 200 characters.
    """
    if topics is None:
        return None
    if isinstance(topics, str):
        raise TypeError(f"topics must be a list of strings, not the string {topics!r}: pass [{topics!r}]")

    checked = frozenset(topics)
    if not checked:
        raise ValueError("no topics given: pass at least one topic such as 'quote:44', or '*' for every event")
    for topic in checked:
        if not isinstance(topic, str) or not topic or len(topic) > _MAX_TOPIC_LENGTH:
            raise ValueError(f"invalid topic {topic!r}: expected a non-empty string of at most {_MAX_TOPIC_LENGTH} characters")

    return None if ALL_TOPICS in checked else checked


class Broadcaster:
    """Deliver ``audit_events`` NOTIFYs to subscribers by topic, without gaps across reconnects.

    Create one per process (see :func:`shared_broadcaster`), call
    :meth:`start` inside the running event loop, and :meth:`subscribe` to
    topics such as ``quote:44``. An event reaches the subscribers of its own
    topic and of one topic per entity ID: ``{"quote_id": 44, "customer_id": 7}``
    is delivered on ``quote:44`` and ``customer:7``. Use it from one event
    loop thread.

    Args:
        listen_url: PostgreSQL URL for LISTEN, direct to the server, not through
            a transaction-pooling PgBouncer. Default: ``DTC_OTEL_LISTEN_DATABASE_URL``,
            else ``DTC_OTEL_DATABASE_URL``.
        database_url: URL for reads of ``audit_events``. Default: the audit
            trail's URL, else ``DTC_OTEL_DATABASE_URL``, else *listen_url*.
        schema: the audit schema. Default: the audit trail's, else ``DTC_OTEL_AUDIT_SCHEMA``.
        max_queue: items each subscriber may have waiting before it gets a resync.
        heartbeat_seconds: after this long without a notification, ``SELECT 1``
            checks that the connection is still alive.
        heartbeat_timeout: seconds that check may take before the connection
            counts as lost.
        reread_span: how far below the highest delivered ID a catch-up starts,
            for IDs that committed late.
        max_catchup: rows a catch-up reads at most; past that, every
            subscriber gets a resync and delivery goes on from the newest event.
        wait: tenacity wait strategy between reconnect attempts.
    """

    def __init__(
        self,
        listen_url: str | None = None,
        *,
        database_url: str | None = None,
        schema: str | None = None,
        max_queue: int = 1000,
        heartbeat_seconds: float = 10.0,
        heartbeat_timeout: float = 5.0,
        reread_span: int = 1000,
        max_catchup: int = 10_000,
        wait: wait_base | None = None,
    ) -> None:
        if max_queue < 2:
            raise ValueError(f"invalid max_queue {max_queue}: expected at least 2")
        if heartbeat_seconds <= 0 or heartbeat_timeout <= 0:
            raise ValueError(
                f"invalid heartbeat {heartbeat_seconds} s / timeout {heartbeat_timeout} s: both must be above 0"
            )
        if reread_span < 0 or max_catchup < 1:
            raise ValueError(f"invalid reread_span {reread_span} or max_catchup {max_catchup}: expected >= 0 and >= 1")
        self._listen_url = listen_url
        self._database_url = database_url
        self._schema = schema
        self.max_queue = max_queue
        self._heartbeat_seconds = heartbeat_seconds
        self._heartbeat_timeout = heartbeat_timeout
        self._reread_span = reread_span
        self._max_catchup = max_catchup
        self._wait = wait or wait_exponential_jitter(multiplier=0.25, max=30, jitter=0.25)
        self.stats = BroadcasterStats()

        self._by_topic: dict[str, set[Subscription]] = {}
        self._everything: set[Subscription] = set()
        self._subscriptions: set[Subscription] = set()
        # Delivered IDs, many more than the re-read span, so a catch-up does not repeat one.
        self._seen = RecentIds(max(10 * reread_span, 10_000))
        # The newest ID when the first LISTEN was in place: catch-ups never read
        # at or below it, because those events were not meant for this process.
        self._floor: int | None = None
        self._max_seen = 0

        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._pool: Any = None
        self._conn: psycopg.AsyncConnection[Any] | None = None

    # -- configuration ----------------------------------------------------

    @property
    def schema(self) -> str:
        """The audit schema the events are read from."""
        return self._schema or audit_schema()

    def database_urls(self) -> tuple[str, str]:
        """Return the LISTEN URL and the URL for reads.

        Raises:
            ValueError: no URL is configured; the message names the settings.
        """
        listen = self._listen_url or listen_url()
        if not listen:
            raise ValueError(
                f"no database for live events: set {LISTEN_URL_ENV} (direct to PostgreSQL) or "
                f"{DATABASE_URL_ENV} to a postgresql:// URL, pass Broadcaster(listen_url=...) in code, "
                "or --database-url to dtc-otel tail"
            )

        return listen, self._database_url or read_url() or listen

    # -- subscribers ------------------------------------------------------

    def subscribe(self, topics: Iterable[str] | None, *, max_queue: int | None = None) -> Subscription:
        """Return a subscription to *topics*; ``None`` or ``"*"`` follows every event.

        Fast at any time: it changes in-memory sets only, never the connection.

        Raises:
            ValueError: no topics, or a topic is empty or over 200 characters.
        """
        checked = check_topics(topics)
        subscription = Subscription(checked, max_queue or self.max_queue, self._forget)
        self._subscriptions.add(subscription)
        if checked is None:
            self._everything.add(subscription)
        else:
            for topic in checked:
                self._by_topic.setdefault(topic, set()).add(subscription)

        return subscription

    def _forget(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        self._everything.discard(subscription)
        for topic in subscription.topics or ():
            followers = self._by_topic.get(topic)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._by_topic[topic]

    @property
    def last_id(self) -> int:
        """The highest event ID delivered, or the newest in the log when listening started."""
        return self._max_seen

    @property
    def reread_span(self) -> int:
        """How far below the highest delivered ID a catch-up starts reading."""
        return self._reread_span

    @property
    def subscriber_count(self) -> int:
        """The number of open subscriptions."""
        return len(self._subscriptions)

    def _deliver(self, event: LiveEvent) -> None:
        if not self._seen.add(event.id):
            self.stats.duplicates += 1
            return

        self._max_seen = max(self._max_seen, event.id)
        self.stats.delivered += 1
        targets = set(self._everything)
        for topic in event.topics:
            targets.update(self._by_topic.get(topic, ()))
        for subscription in targets:
            subscription.offer(event)

    def _mark_gap_everywhere(self, reason: str) -> None:
        self.stats.gaps += 1
        for subscription in list(self._subscriptions):
            subscription.mark_gap(reason)

    # -- life cycle -------------------------------------------------------

    async def start(self) -> None:
        """Start the listener task in the running loop; return at once, also when already started.

        The connection is made in the background and retried until it
        succeeds; :meth:`wait_ready` waits for it.

        Raises:
            ValueError: no database URL is configured.
        """
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        if self._loop is not None and self._loop is not loop:
            self._abandon_loop()

        urls = self.database_urls()
        self._ready = asyncio.Event()
        self._loop = loop
        self._task = loop.create_task(self._run(*urls), name="dtc-otel-live-listener", context=_background_context())

    def _abandon_loop(self) -> None:
        # The previous event loop ended without stop(), as when a test runner
        # starts a new loop per test: its task, connections and waiters are
        # unusable, so they are dropped and the subscriptions ended.
        self._task = None
        self._conn = None
        self._pool = None
        for subscription in list(self._subscriptions):
            with contextlib.suppress(RuntimeError):
                subscription.close()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the first LISTEN is in place; return False after *timeout* seconds."""
        if self._ready is None:
            return False
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False

        return True

    @property
    def running(self) -> bool:
        """True while the listener task runs."""
        return self._task is not None and not self._task.done()

    @property
    def backend_pid(self) -> int | None:
        """The server process ID of the LISTEN connection, None while disconnected."""
        conn = self._conn
        if conn is None or conn.closed:
            return None

        return int(conn.info.backend_pid)

    async def stop(self) -> None:
        """Stop listening, close the connections and end every subscription."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for subscription in list(self._subscriptions):
            subscription.close()
        self.stats.connected = False

    async def __aenter__(self) -> Broadcaster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- reads for resume -------------------------------------------------

    async def read_events(
        self, topics: frozenset[str] | None, after_id: int, *, max_events: int, timeout: float = 5.0
    ) -> tuple[list[LiveEvent], bool]:
        """Read the events on *topics* after *after_id* from the log; return them and whether all were read.

        Raises:
            psycopg.Error, TimeoutError: the log could not be read; a resume
            should then tell its client about the gap.
        """
        if self._pool is None:
            await self.start()
            await self.wait_ready(timeout)
        if self._pool is None:
            raise TimeoutError(f"the live listener has no database connection after {timeout} s")

        async with self._pool.connection(timeout=timeout) as conn:
            return await _history.read_range(
                conn, self.schema, after_id, topics, page_size=500, max_events=max_events
            )

    # -- the listener task ------------------------------------------------

    async def _run(self, listen: str, reads: str) -> None:
        from psycopg_pool import AsyncConnectionPool

        # Opened here, so the pool's own tasks inherit this task's context.
        self._pool = AsyncConnectionPool(
            reads, min_size=0, max_size=4, open=False, name="dtc-otel-live",
            kwargs={"autocommit": True, "application_name": "dtc-otel-live-reader"},
        )  # fmt: skip
        await self._pool.open(wait=False)
        attempt = 0
        try:
            while True:
                try:
                    await self._connect(listen)
                    attempt = 0
                    await self._listen()
                except asyncio.CancelledError:
                    raise
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    attempt += 1
                    self._lost(exc, attempt)
                except Exception:  # noqa: BLE001 - the listener must outlive a bug in one event
                    attempt += 1
                    self.stats.connected = False
                    self.stats.reconnects += 1
                    log_once_per_interval(_logger, "live listener failed; restarting it", exc_info=True)
                await asyncio.sleep(self._wait(_RetryState(attempt)))  # type: ignore[arg-type]
        finally:
            await self._close_connection()
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await pool.close(timeout=1.0)

    def _lost(self, exc: BaseException, attempt: int) -> None:
        self.stats.connected = False
        self.stats.reconnects += 1
        if isinstance(exc, psycopg.errors.UndefinedTable):
            log_once_per_interval(
                _logger,
                f"live listener: table {self.schema}.audit_events not found; run `dtc-otel migrate`",
                level=logging.ERROR,
            )
            return
        log_once_per_interval(
            _logger,
            "live listener lost its PostgreSQL connection; reconnecting",
            # psycopg's messages span several lines; a log field keeps one.
            error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200] or 'no details'}",
            attempt=attempt,
        )

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _connect(self, url: str) -> None:
        await self._close_connection()
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=5, application_name="dtc-otel-live", **_TCP_SETTINGS
        )
        self._conn = conn
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        if self._floor is None:
            self._floor = self._max_seen = await _history.max_id(conn, self.schema)
            _logger.info("live listener connected to PostgreSQL, listening on %s", NOTIFY_CHANNEL)
        else:
            caught_up = await self._catch_up(conn)
            log_once_per_interval(
                _logger, "live listener reconnected to PostgreSQL", level=logging.INFO, caught_up=caught_up
            )
        self.stats.connected = True
        if self._ready is not None:
            self._ready.set()

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Deliver the events committed while disconnected; return how many were new.

        LISTEN is already in place, so an event committed during this read
        is both read here and queued as a notification. The ID window drops
        the second copy.
        """
        after = max(self._floor or 0, self._max_seen - self._reread_span)
        events, complete = await _history.read_range(
            conn, self.schema, after, None, page_size=500, max_events=self._max_catchup
        )
        before = self.stats.delivered
        for event in events:
            self._deliver(event)
        caught_up = self.stats.delivered - before
        self.stats.caught_up += caught_up
        if not complete:
            # Too far behind to replay: subscribers refetch their state, and
            # delivery goes on from the newest event.
            self._mark_gap_everywhere("too_far_behind")
            self._floor = self._max_seen = max(self._max_seen, await _history.max_id(conn, self.schema))
            log_once_per_interval(
                _logger, "live listener skipped events after an outage; subscribers were sent a resync",
                max_catchup=self._max_catchup,
            )  # fmt: skip

        return caught_up

    async def _listen(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            received = 0
            # The generator ends by itself after the timeout. It is left early
            # only when this task is cancelled, and aclosing() then releases the
            # connection's lock (see the module docstring).
            async with contextlib.aclosing(conn.notifies(timeout=self._heartbeat_seconds)) as notifies:
                async for notify in notifies:
                    received += 1
                    await self._handle(notify.payload)
            if received == 0:
                await self._heartbeat(conn)

    async def _heartbeat(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Check the idle connection with ``SELECT 1``, since a silently dropped network sends no error.

        Raises:
            TimeoutError: no response within the heartbeat timeout.
        """
        # NOTE: on a timeout psycopg first tries to cancel the query and waits
        # up to 5 s more for the server, so a connection whose packets vanish
        # is replaced after about heartbeat_seconds + heartbeat_timeout + 5 s.
        try:
            async with asyncio.timeout(self._heartbeat_timeout):
                await conn.execute("SELECT 1")
        except TimeoutError:
            raise TimeoutError(f"heartbeat query timed out after {self._heartbeat_timeout} s") from None

    async def _handle(self, payload: str) -> None:
        self.stats.notifications += 1
        try:
            fields = json.loads(payload)
            if fields.get("truncated"):
                self.stats.truncated += 1
                await self._deliver_truncated(int(fields["id"]))
                return
            event = LiveEvent.from_notify(fields)
        except (ValueError, TypeError, KeyError, AttributeError):
            self.stats.invalid += 1
            log_once_per_interval(_logger, "invalid NOTIFY payload on the audit channel skipped", payload=payload[:200])
            return

        self._deliver(event)

    async def _deliver_truncated(self, audit_id: int) -> None:
        if audit_id in self._seen:
            self.stats.duplicates += 1
            return
        try:
            async with self._pool.connection(timeout=self._heartbeat_timeout) as conn:
                event = await _history.read_by_id(conn, self.schema, audit_id)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            # The topic is in the unread row, so every subscriber gets the resync.
            self._mark_gap_everywhere("log_unreadable")
            log_once_per_interval(
                _logger, "live listener could not read a truncated event; subscribers were sent a resync",
                audit_id=audit_id, error=type(exc).__name__,
            )  # fmt: skip
            return

        if event is None:
            self.stats.invalid += 1
            log_once_per_interval(_logger, "NOTIFY names an audit event that does not exist", audit_id=audit_id)
            return
        self._deliver(event)


_shared: Broadcaster | None = None
_shared_pid: int | None = None


def shared_broadcaster() -> Broadcaster:
    """Return this process's broadcaster, configured from the environment.

    A forked worker gets its own: a connection cannot be shared across processes.
    """
    global _shared, _shared_pid

    if _shared is None or _shared_pid != os.getpid():
        _shared = Broadcaster()
        _shared_pid = os.getpid()

    return _shared
