"""Live events against a real PostgreSQL and a real uvicorn: fan-out, outages, SSE, ``dtc-otel tail``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tenacity import wait_fixed

from dtc_otel.audit._schema import apply_migrations
from dtc_otel.audit._state import audit_state
from dtc_otel.live import Broadcaster, LiveEvent, Resync, apublish, event_topics, publish
from dtc_otel.live._settings import listen_url
from tests.conftest import APPS, free_port, wait_http

SCHEMA = "dtc_audit"


@pytest.fixture
def live_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database with the audit tables, which publish() writes to."""
    apply_migrations(database_url, SCHEMA)
    monkeypatch.setattr(audit_state, "schema", SCHEMA)
    return database_url


def run(coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    """Run *coroutine* in a new event loop, failing after *timeout* seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def broadcaster(url: str, **options: Any) -> Broadcaster:
    return Broadcaster(url, database_url=url, schema=SCHEMA, **options)


def publish_one(url: str, topic: str, state: str, **options: Any) -> int:
    """Publish one event in its own committed transaction; return its audit_events id."""
    with psycopg.connect(url) as conn:
        event_id = publish(conn, topic, state, **options)
        row = conn.execute(f"SELECT id FROM {SCHEMA}.audit_events WHERE event_id = %s", (event_id,)).fetchone()
    return int(row[0])


def table_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute(f"SELECT id FROM {SCHEMA}.audit_events ORDER BY id")]


def terminate(url: str, backend_pid: int | None) -> None:
    assert backend_pid is not None, "the listener has no connection to terminate"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))


async def collect(subscription: Any, count: int, timeout: float = 10.0) -> list[Any]:
    """Read *count* items, or as many as arrive within *timeout* seconds."""
    items: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                items.append(await subscription.get())
        except TimeoutError:
            break
    return items


async def connected(live: Broadcaster, timeout: float = 10.0) -> None:
    """Wait until the listener has a LISTEN connection again."""
    deadline = time.monotonic() + timeout
    while not (live.stats.connected and live.backend_pid is not None):
        assert time.monotonic() < deadline, f"the listener did not reconnect within {timeout} s"
        await asyncio.sleep(0.02)


async def nothing_within(subscription: Any, seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return subscription.qsize() == 0


# -- the broadcaster ------------------------------------------------------------


def test_event_topics_cover_entities() -> None:
    """An event is delivered on its own topic and on one topic per entity ID."""
    topics = event_topics("invoice:9", {"quote_id": 44, "customer_id": 7, "region": "eu"})

    assert topics == {"invoice:9", "quote:44", "customer:7", "region:eu"}


def test_fan_out_by_topic_and_entity(live_db: str) -> None:
    """Subscribers of the topic and of each entity receive the event; others do not."""

    async def scenario() -> None:
        async with broadcaster(live_db) as live:
            assert await live.wait_ready(10)
            by_topic = live.subscribe(["invoice:9"])
            by_quote = live.subscribe(["quote:44"])
            by_customer = live.subscribe(["customer:7"])
            by_both = live.subscribe(["quote:44", "customer:7"])
            everything = live.subscribe(["*"])
            other = live.subscribe(["quote:45"])

            audit_id = await asyncio.to_thread(
                publish_one, live_db, "invoice:9", "sent", entity_ids={"quote_id": 44, "customer_id": 7}
            )

            for subscription in (by_topic, by_quote, by_customer, by_both, everything):
                [event] = await collect(subscription, 1)
                assert isinstance(event, LiveEvent)
                assert event.id == audit_id
                assert event.status == "sent"
                assert event.entity_ids == {"quote_id": 44, "customer_id": 7}
            assert await nothing_within(by_both, 0.3), "a subscriber of two matching topics got the event twice"
            assert other.qsize() == 0

    run(scenario())


def test_slow_subscriber_gets_one_resync(live_db: str) -> None:
    """A full queue ends in one Resync, later events are dropped, and the queue never grows past its limit."""

    async def scenario() -> None:
        async with broadcaster(live_db) as live:
            assert await live.wait_ready(10)
            slow = live.subscribe(["quote:44"], max_queue=5)
            fast = live.subscribe(["quote:44"])

            with psycopg.connect(live_db) as conn:
                for index in range(200):
                    publish(conn, "quote:44", f"step-{index}")
            received = await collect(fast, 200)
            assert len(received) == 200
            assert slow.qsize() == 5

            items = [slow.get_nowait() for _ in range(5)]
            assert [type(item) for item in items] == [LiveEvent] * 4 + [Resync]
            assert items[4] == Resync(received[3].id, "slow_subscriber")
            assert slow.dropped == 196
            assert slow.resyncs == 1

            latest = await asyncio.to_thread(publish_one, live_db, "quote:44", "after the gap")
            [event] = await collect(slow, 1)
            assert event.id == latest

    run(scenario())


def test_subscribe_is_fast_while_listening(live_db: str) -> None:
    """Subscribing, unsubscribing and stopping do not wait for the listener's notifies() timeout."""

    async def scenario() -> None:
        live = broadcaster(live_db, heartbeat_seconds=30)
        await live.start()
        assert await live.wait_ready(10)
        await asyncio.sleep(0.2)  # the listener now waits inside notifies(timeout=30)

        started = time.perf_counter()
        subscriptions = [live.subscribe([f"quote:{index}"]) for index in range(1000)]
        for subscription in subscriptions:
            subscription.close()
        assert time.perf_counter() - started < 0.5
        assert live.subscriber_count == 0

        late = live.subscribe(["quote:7"])
        audit_id = await asyncio.to_thread(publish_one, live_db, "quote:7", "approved")
        started = time.perf_counter()
        [event] = await collect(late, 1, timeout=5)
        assert event.id == audit_id
        assert time.perf_counter() - started < 2

        started = time.perf_counter()
        await live.stop()
        assert time.perf_counter() - started < 2
        assert live.running is False

    run(scenario())


def test_terminated_backend_loses_nothing(live_db: str) -> None:
    """Killing the LISTEN backend twice mid-stream still delivers every event once, in order."""

    async def scenario() -> None:
        async with broadcaster(live_db, heartbeat_seconds=1) as live:
            assert await live.wait_ready(10)
            subscription = live.subscribe(["quote:44"])
            for index in range(30):
                if index in (10, 20):
                    await connected(live)
                    await asyncio.to_thread(terminate, live_db, live.backend_pid)
                await asyncio.to_thread(publish_one, live_db, "quote:44", f"step-{index}")
                await asyncio.sleep(0.01)

            received = await collect(subscription, 30, timeout=15)
            ids = [event.id for event in received]
            assert ids == table_ids(live_db)
            assert len(set(ids)) == 30
            assert live.stats.reconnects >= 2
            assert live.stats.caught_up >= 1

    run(scenario(), timeout=60)


def test_catch_up_finds_late_commit(live_db: str) -> None:
    """An event with a lower ID that commits during an outage, after a higher one, is still delivered."""

    async def scenario() -> None:
        # A fixed 2 s reconnect wait keeps the late commit inside the outage.
        async with broadcaster(live_db, wait=wait_fixed(2)) as live:
            assert await live.wait_ready(10)
            subscription = live.subscribe(["quote:44"])

            late = psycopg.connect(live_db)
            try:
                publish(late, "quote:44", "late")  # takes the lower ID, not committed yet
                early = await asyncio.to_thread(publish_one, live_db, "quote:44", "early")
                [first] = await collect(subscription, 1)
                assert first.id == early

                await asyncio.to_thread(terminate, live_db, live.backend_pid)
                await asyncio.sleep(0.3)
                late.commit()
            finally:
                late.close()

            [second] = await collect(subscription, 1, timeout=10)
            assert second.id < early
            assert second.status == "late"
            assert live.stats.caught_up == 1

    run(scenario())


class FreezingProxy:
    """A TCP proxy on 127.0.0.1 whose open connections can go silent, like a lost network.

    After :meth:`freeze`, bytes on the connections open so far are read and
    dropped, and nothing is closed, so neither side gets an error. New
    connections are forwarded as usual.
    """

    def __init__(self, target: tuple[str, int] | str) -> None:
        # A (host, port) pair, or the path of a Unix socket, as the embedded test database has.
        self._target = target
        self._frozen: list[dict[str, bool]] = []
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if isinstance(self._target, str):
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(self._target)
            else:
                upstream = socket.create_connection(self._target)
            state = {"frozen": False}
            self._frozen.append(state)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, state), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := source.recv(65536):
                if not state["frozen"]:
                    target.sendall(data)
            if not state["frozen"]:
                # Pass the end of the stream on, as PostgreSQL's reply to a cancel request needs.
                target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def freeze(self) -> None:
        for state in self._frozen:
            state["frozen"] = True

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def test_silent_network_loss_detected(live_db: str) -> None:
    """A LISTEN connection that goes silent is replaced, and the events sent meanwhile arrive."""
    params = conninfo_to_dict(live_db)
    host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
    proxy = FreezingProxy(f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port))
    through_proxy = make_conninfo(live_db, host="127.0.0.1", port=proxy.port)

    async def scenario() -> None:
        live = Broadcaster(through_proxy, database_url=live_db, schema=SCHEMA, heartbeat_seconds=0.5, heartbeat_timeout=0.5)
        async with live:
            assert await live.wait_ready(10)
            subscription = live.subscribe(["quote:44"])
            first_backend = live.backend_pid

            proxy.freeze()
            audit_id = await asyncio.to_thread(publish_one, live_db, "quote:44", "sent while silent")

            [event] = await collect(subscription, 1, timeout=20)
            assert event.id == audit_id
            assert live.backend_pid != first_backend
            assert live.stats.caught_up == 1

    try:
        run(scenario())
    finally:
        proxy.close()


def test_restart_in_new_event_loop(live_db: str) -> None:
    """A broadcaster left running when its event loop ended starts cleanly in the next loop."""
    live = broadcaster(live_db)

    async def first() -> Any:
        await live.start()
        assert await live.wait_ready(10)
        return live.subscribe(["quote:44"])

    async def second() -> int:
        await live.start()
        assert await live.wait_ready(10)
        subscription = live.subscribe(["quote:44"])
        audit_id = await asyncio.to_thread(publish_one, live_db, "quote:44", "second loop")
        [event] = await collect(subscription, 1)
        await live.stop()
        return event.id

    stale = run(first())
    delivered = run(second())

    assert stale.closed
    assert delivered == table_ids(live_db)[-1]


def test_rollback_delivers_nothing(live_db: str) -> None:
    """An event published in a rolled-back transaction never reaches a subscriber."""

    async def scenario() -> None:
        async with broadcaster(live_db) as live:
            assert await live.wait_ready(10)
            subscription = live.subscribe(["quote:44"])

            with psycopg.connect(live_db) as conn:
                publish(conn, "quote:44", "never")
                conn.rollback()
            committed = await asyncio.to_thread(publish_one, live_db, "quote:44", "committed")

            [event] = await collect(subscription, 1)
            assert event.id == committed
            assert await nothing_within(subscription, 0.3)

    run(scenario())


def test_apublish_joins_transaction(live_db: str) -> None:
    """apublish writes in the caller's async transaction and is delivered on commit."""

    async def scenario() -> None:
        async with broadcaster(live_db) as live:
            assert await live.wait_ready(10)
            subscription = live.subscribe(["customer:7"])

            async with await psycopg.AsyncConnection.connect(live_db) as conn:
                async with conn.transaction():
                    await apublish(conn, "quote:44", "approved", entity_ids={"customer_id": 7}, data={"total": 120})
                    assert await nothing_within(subscription, 0.3), "delivered before commit"

            [event] = await collect(subscription, 1)
            assert event.topic == "quote:44"
            assert event.name == "state"

        with psycopg.connect(live_db) as conn:
            payload, row_id = conn.execute(f"SELECT payload, row_id FROM {SCHEMA}.audit_events").fetchone()
        assert payload == {"total": 120}
        assert row_id == "44"

    run(scenario())


def test_truncated_payload_read_from_table(live_db: str) -> None:
    """A NOTIFY payload too big for PostgreSQL arrives as a reference and is resolved by ID."""
    entity_ids = {f"key{index}_id": "x" * 100 for index in range(100)}

    async def scenario() -> None:
        async with broadcaster(live_db) as live:
            assert await live.wait_ready(10)
            subscription = live.subscribe(["key5:" + "x" * 100])

            audit_id = await asyncio.to_thread(publish_one, live_db, "quote:44", "big", entity_ids=entity_ids)

            [event] = await collect(subscription, 1)
            assert event.id == audit_id
            assert event.entity_ids == entity_ids
            assert live.stats.truncated == 1

    run(scenario())


def test_publish_rejects_bad_topic(live_db: str) -> None:
    """publish names the invalid topic or state in its error."""
    with psycopg.connect(live_db) as conn:
        with pytest.raises(ValueError, match="invalid topic ''"):
            publish(conn, "", "approved")
        with pytest.raises(ValueError, match="invalid state ''"):
            publish(conn, "quote:44", "")


def test_listen_url_setting() -> None:
    """The LISTEN URL setting wins over the database URL, which is the fallback."""
    direct = "postgresql://app@127.0.0.1:5432/app"
    pooled = "postgresql://app@127.0.0.1:6432/app"

    assert listen_url({"DTC_OTEL_LISTEN_DATABASE_URL": direct, "DTC_OTEL_DATABASE_URL": pooled}) == direct
    assert listen_url({"DTC_OTEL_DATABASE_URL": pooled}) == pooled
    assert listen_url({}) is None
    with pytest.raises(ValueError, match="DTC_OTEL_LISTEN_DATABASE_URL"):
        listen_url({"DTC_OTEL_LISTEN_DATABASE_URL": "mysql://app@127.0.0.1/app"})


def test_missing_url_names_settings() -> None:
    """Starting without any database URL raises an error naming both settings."""
    with pytest.raises(ValueError, match="DTC_OTEL_LISTEN_DATABASE_URL.*DTC_OTEL_DATABASE_URL"):
        Broadcaster(schema=SCHEMA).database_urls()


# -- Server-Sent Events over real HTTP -----------------------------------------


class EventStream:
    """Server-Sent Events read from an open httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        """Return the next event with data as {"id", "event", "data"}; comments and pings are skipped."""
        async with asyncio.timeout(timeout):
            fields: dict[str, Any] = {}
            async for line in self._lines:
                if line == "":
                    if "data" in fields:
                        fields["data"] = json.loads(fields["data"])
                        return fields
                    fields = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
        raise AssertionError("the stream ended")


@pytest.fixture
def live_server(launch, live_db: str) -> Callable[..., tuple[str, Any]]:
    """Start tests/apps/live_app.py under dtc-otel-run; return (base URL, launched process)."""

    def start(**env: str) -> tuple[str, Any]:
        port = free_port()
        app = launch(
            ["python", "live_app.py"],
            PORT=str(port),
            DTC_OTEL_DATABASE_URL=live_db,
            DTC_OTEL_LISTEN_DATABASE_URL=live_db,
            DTC_OTEL_LOG_FORMAT="json",
            **env,
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/live-stats")
        wait_until(lambda: httpx.get(f"{base}/live-stats").json()["connected"], "the listener connected")
        return base, app

    return start


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}")


def subscribers(base: str) -> int:
    return int(httpx.get(f"{base}/live-stats").json()["subscribers"])


def test_sse_stream_delivers_events(live_server, live_db: str) -> None:
    """An authorized stream receives events on its topic and its entities, with audit IDs."""
    base, _ = live_server()

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", f"{base}/events", params={"topic": "quote:44"}) as response:
                stream = EventStream(response)
                await asyncio.to_thread(wait_until, lambda: subscribers(base) == 1, "the stream subscribed")
                direct = await asyncio.to_thread(publish_one, live_db, "quote:44", "approved")
                await asyncio.to_thread(publish_one, live_db, "quote:45", "unrelated")
                via_entity = await asyncio.to_thread(
                    publish_one, live_db, "invoice:9", "sent", entity_ids={"quote_id": 44}
                )

                first = await stream.next()
                second = await stream.next()

        assert first["id"] == str(direct)
        assert first["event"] == "state"
        assert first["data"]["status"] == "approved"
        assert first["data"]["topic"] == "quote:44"
        assert second["id"] == str(via_entity)
        assert second["data"]["entity_ids"] == {"quote_id": 44}

    run(scenario())


def test_sse_response_headers(live_server) -> None:
    """The stream is sent uncached and unbuffered, as text/event-stream."""
    base, _ = live_server()

    with httpx.stream("GET", f"{base}/events", params={"topic": "quote:44"}, timeout=10) as response:
        headers = response.headers

    assert response.status_code == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"


def test_sse_rejects_bad_requests(live_server) -> None:
    """A denied topic gives 403; a missing topic or invalid Last-Event-ID gives 400."""
    base, _ = live_server()

    denied = httpx.get(f"{base}/events", params={"topic": ["quote:44", "secret:1"]})
    missing = httpx.get(f"{base}/events")
    bad_id = httpx.get(f"{base}/events", params={"topic": "quote:44"}, headers={"Last-Event-ID": "abc"})

    assert denied.status_code == 403
    assert "secret:1" in denied.json()["detail"]
    assert missing.status_code == 400
    assert "?topic=" in missing.json()["detail"]
    assert bad_id.status_code == 400
    assert "Last-Event-ID 'abc'" in bad_id.json()["detail"]
    assert subscribers(base) == 0


def sse_fields(chunk: bytes) -> list[tuple[str, str]]:
    """Return (event, id) of every event in one chunk a stream yielded."""
    fields = []
    for block in chunk.decode().replace("\r\n", "\n").split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            fields.append((lines["event"], lines.get("id", "")))
    return fields


def test_slow_stream_refills_gap_from_log(live_db: str) -> None:
    """A stream whose queue overflowed sends the missed events from the log, in order, without a resync."""
    from dtc_otel.live._sse import _Options, _Stream

    options = _Options(15, 30, 20, 3600, 5000, 2000, max_queue=4)

    async def scenario() -> list[tuple[str, str]]:
        async with broadcaster(live_db) as live:
            assert await live.wait_ready(10)
            stream = _Stream(live, ["quote:44"], None, options)
            messages = stream.events()
            await anext(messages)  # the opening comment; the stream has subscribed

            with psycopg.connect(live_db) as conn:
                for index in range(20):
                    publish(conn, "quote:44", f"step-{index}")
            while live.stats.delivered < 20:
                await asyncio.sleep(0.02)

            received: list[tuple[str, str]] = []
            while len(received) < 20:
                received += sse_fields(await anext(messages))
            await messages.aclose()
            assert live.subscriber_count == 0
            return received

    received = run(scenario())

    assert received == [("state", str(audit_id)) for audit_id in table_ids(live_db)]


def test_router_requires_authorize() -> None:
    """Building the router without authorize raises a ValueError that shows how to pass one."""
    from dtc_otel.live import events_router

    with pytest.raises(ValueError, match="authorize="):
        events_router(None)


def test_unconfigured_router_returns_503() -> None:
    """Without a database URL the endpoint returns 503 and the app keeps serving."""
    from fastapi import FastAPI

    from dtc_otel.live import events_router

    app = FastAPI()
    app.include_router(events_router(Broadcaster(schema=SCHEMA), authorize=lambda request, topics: True))

    @app.get("/ping")
    def ping() -> dict:
        return {"ping": True}

    async def scenario() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            events = await client.get("/events", params={"topic": "quote:44"})
            ping_response = await client.get("/ping")
        return events.status_code, ping_response.status_code

    events_status, ping_status = run(scenario())

    assert events_status == 503
    assert ping_status == 200


def test_sse_resume_from_last_event_id(live_server, live_db: str) -> None:
    """Last-Event-ID (header or query) replays the missed events from the log, then goes live."""
    base, _ = live_server()
    missed = [publish_one(live_db, "quote:44", f"step-{index}") for index in range(3)]
    publish_one(live_db, "quote:45", "other topic")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            headers = {"Last-Event-ID": str(missed[0])}
            async with client.stream("GET", f"{base}/events?topic=quote:44", headers=headers) as response:
                stream = EventStream(response)
                replayed = [await stream.next(), await stream.next()]
                live = await asyncio.to_thread(publish_one, live_db, "quote:44", "live")
                after = await stream.next()

            query = {"topic": "quote:44", "last_event_id": str(missed[1])}
            async with client.stream("GET", f"{base}/events", params=query) as response:
                from_query = await EventStream(response).next()

        assert [event["id"] for event in replayed] == [str(missed[1]), str(missed[2])]
        assert after["id"] == str(live)
        assert from_query["id"] == str(missed[2])

    run(scenario())


def test_sse_logs_carry_stream_trace_id(live_server, live_db: str, receiver) -> None:
    """Each stream's log lines carry its own trace ID, and its one server span ends with the stream."""
    base, app = live_server()

    async def scenario() -> list[str]:
        trace_ids = []
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", f"{base}/events?topic=quote:44") as first:
                async with client.stream("GET", f"{base}/events?topic=customer:7") as second:
                    for response in (first, second):
                        trace_ids.append(response.headers["traceresponse"].split("-")[1])
                    await asyncio.to_thread(wait_until, lambda: subscribers(base) == 2, "both streams subscribed")
                    for index in range(3):
                        await asyncio.to_thread(
                            publish_one, live_db, "quote:44", f"step-{index}", entity_ids={"customer_id": 7}
                        )
                    for response in (first, second):
                        stream = EventStream(response)
                        for _ in range(3):
                            await stream.next()
        return trace_ids

    trace_ids = run(scenario())
    wait_until(lambda: subscribers(base) == 0, "both streams closed")
    app.wait_for_line("live stream closed")

    lines = {
        (record["event"], record.get("topics")): record.get("trace_id")
        for record in app.json_lines()
        if record.get("logger") == "dtc_otel.live"
    }
    assert trace_ids[0] != trace_ids[1]
    assert lines[("live stream opened", "quote:44")] == trace_ids[0]
    assert lines[("live stream closed", "quote:44")] == trace_ids[0]
    assert lines[("live stream opened", "customer:7")] == trace_ids[1]
    assert lines[("live stream closed", "customer:7")] == trace_ids[1]

    def stream_spans(spans: list[Any]) -> list[Any]:
        return [span for span in spans if span.trace_id == trace_ids[0]]

    receiver.wait_for(stream_spans)
    time.sleep(0.5)  # a span per event would have been exported in the same batch or soon after
    spans = stream_spans(receiver.spans)
    assert len(spans) == 1
    assert spans[0].kind == "SERVER"
    assert spans[0].attributes.get("http.route") == "/events"
    assert [span.name for span in receiver.spans if span.kind == "CLIENT"] == [], "the listener's queries were traced"


def test_disconnect_releases_subscription(live_server) -> None:
    """A client that closes its stream frees the subscription on the server."""
    base, app = live_server()

    with httpx.stream("GET", f"{base}/events", params={"topic": "quote:44"}, timeout=10):
        wait_until(lambda: subscribers(base) == 1, "the stream subscribed")

    wait_until(lambda: subscribers(base) == 0, "the subscription was released", timeout=5)
    app.wait_for_line('"reason":"client_disconnected"', timeout=5)


def test_stream_ends_after_max_duration(live_server) -> None:
    """A stream ends by itself after max_stream_seconds, so a vanished client cannot hold it."""
    base, app = live_server(LIVE_MAX_STREAM_SECONDS="1")

    started = time.monotonic()
    with httpx.stream("GET", f"{base}/events", params={"topic": "quote:44"}, timeout=10) as response:
        body = response.read()

    assert time.monotonic() - started < 5
    assert b"retry: 2000" in body
    app.wait_for_line('"reason":"max_stream_seconds"', timeout=5)
    assert subscribers(base) == 0


def test_stalled_client_dropped_after_send_timeout(live_server, live_db: str) -> None:
    """A client that stops reading is dropped once a write has blocked for send_timeout."""
    base, app = live_server(LIVE_SEND_TIMEOUT="1")
    port = int(base.rsplit(":", 1)[1])
    client = socket.socket()
    # A small receive buffer, so the server's writes block after a few MB.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    try:
        client.sendall(b"GET /events?topic=quote:44 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        wait_until(lambda: subscribers(base) == 1, "the stream subscribed")
        # Never read again: about 12 MB of events fill every buffer on the way.
        with psycopg.connect(live_db) as conn:
            for index in range(4000):
                publish(conn, "quote:44", f"step-{index}-" + "x" * 3000)
                if index % 500 == 499:
                    conn.commit()

        app.wait_for_line('"reason":"send_timeout"', timeout=30)
        wait_until(lambda: subscribers(base) == 0, "the subscription was released", timeout=5)
    finally:
        client.close()


def test_sigterm_with_open_stream_exits(live_server) -> None:
    """SIGTERM stops the server within a few seconds although a stream is open."""
    base, app = live_server()
    ended = read_in_thread(f"{base}/events?topic=quote:44")
    wait_until(lambda: subscribers(base) == 1, "the stream subscribed")

    started = time.monotonic()
    app.signal(signal.SIGTERM)
    code = app.process.wait(10)

    assert time.monotonic() - started < 5
    # uvicorn re-raises the signal after its graceful shutdown.
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in app.output()
    assert '"reason":"server_shutdown"' in app.output()
    assert ended.wait(5)


def read_in_thread(url: str) -> threading.Event:
    """Open a stream to *url* in a thread; return an event set when the stream ends."""
    ended = threading.Event()

    def read_stream() -> None:
        try:
            with httpx.stream("GET", url, timeout=30) as response:
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass
        ended.set()

    threading.Thread(target=read_stream, daemon=True).start()
    return ended


def test_reload_with_open_stream(launch, live_db: str, tmp_path: Path) -> None:
    """uvicorn --reload restarts its worker promptly although a stream is open."""
    shutil.copy(APPS / "live_app.py", tmp_path / "live_app.py")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = launch(
        ["uvicorn", "live_app:app", "--port", str(port), "--reload", "--reload-dir", str(tmp_path)],
        cwd=tmp_path,
        DTC_OTEL_DATABASE_URL=live_db,
        DTC_OTEL_LOG_FORMAT="json",
    )
    wait_http(f"{base}/live-stats")
    ended = read_in_thread(f"{base}/events?topic=quote:44")
    wait_until(lambda: subscribers(base) == 1, "the stream subscribed")

    started = time.monotonic()
    source = tmp_path / "live_app.py"
    source.write_text(source.read_text() + "\n# changed to trigger a reload\n")
    wait_until(lambda: app.output().count("Application startup complete") >= 2, "the worker restarted", timeout=20)

    assert time.monotonic() - started < 8
    assert ended.wait(5)
    assert subscribers(base) == 0


# -- dtc-otel tail ----------------------------------------------------------------


class Lines:
    """The lines of a subprocess pipe, read by a thread so that every wait has a timeout."""

    def __init__(self, pipe: Any) -> None:
        self._lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def next(self, timeout: float = 10.0) -> str:
        with self._cond:
            if not self._cond.wait_for(lambda: self._lines, timeout):
                raise AssertionError(f"no line within {timeout} s")
            return self._lines.pop(0)


def test_tail_prints_events(live_db: str) -> None:
    """dtc-otel tail prints one line per event on its topic, with trace ID, and stops on SIGTERM."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DTC_OTEL_", "OTEL_"))}
    tail = subprocess.Popen(
        [sys.executable, "-m", "dtc_otel._cli_live", "tail", "--topic", "quote:44", "--database-url", live_db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        stdout, stderr = Lines(tail.stdout), Lines(tail.stderr)
        assert "following quote:44" in stderr.next()

        with psycopg.connect(live_db) as conn:
            publish(conn, "quote:45", "unrelated")
        with psycopg.connect(live_db) as conn:
            from opentelemetry import trace
            from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

            context = SpanContext(int(trace_id, 16), 0x00F067AA0BA902B7, is_remote=False, trace_flags=TraceFlags(1))
            with trace.use_span(NonRecordingSpan(context)):
                publish(conn, "quote:44", "approved", entity_ids={"customer_id": 7})

        line = stdout.next().split("  ")
        tail.send_signal(signal.SIGTERM)
        code = tail.wait(5)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(5)

    assert line[1:] == ["quote:44", "audit_events", "44", "approved", trace_id]
    assert line[0].endswith("+00:00")
    assert code == 0


def test_tail_without_database_fails() -> None:
    """dtc-otel tail without a URL exits 2 and names the settings to set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DTC_OTEL_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-m", "dtc_otel._cli_live", "tail"], capture_output=True, text=True, env=env, timeout=30
    )

    assert result.returncode == 2
    assert "DTC_OTEL_LISTEN_DATABASE_URL" in result.stderr
    assert "--database-url" in result.stderr
    assert "Broadcaster(" not in result.stderr


def test_id_window_drops_repeats_within_span() -> None:
    """IdWindow drops a repeated ID within its span, in any order, and counts older IDs as new."""
    from dtc_otel.live._events import IdWindow

    window = IdWindow(8)

    assert [window.add(audit_id) for audit_id in (5, 7, 6, 7, 5)] == [True, True, True, False, False]
    assert window.add(14) is True  # the window now spans 7 to 14
    assert (window.add(7), window.add(6)) == (False, True)
    assert window.add(10**12) is True  # a far jump clears the window without a huge integer
    assert window.add(14) is True
    assert window.add(10**12) is False
