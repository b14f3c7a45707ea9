"""Measure live event latency and the cost of many SSE subscribers, against a local PostgreSQL.

One run measures three things, each on 127.0.0.1:

1. raw LISTEN/NOTIFY: one psycopg connection sends ``NOTIFY`` (autocommit),
   another waits in ``notifies()``. Latency is from just before the NOTIFY
   statement until the listener has the notification.
2. NOTIFY to SSE client at light load: ``dtc_otel.live.publish`` in a
   transaction, then COMMIT; latency is from just before the COMMIT (which
   sends the NOTIFY) until one SSE client has parsed the event from
   ``GET /events`` over HTTP. One event at a time.
3. many subscribers: ``--subscribers`` SSE clients (default 1,000) on one
   uvicorn process follow one topic. A burst of ``--burst-events`` events,
   each in its own transaction, is published as fast as one connection can,
   and the latency of every delivery is taken the same way as in 2. Then a
   soak keeps the clients connected for ``--duration`` seconds with one
   event every ``--soak-interval`` seconds, sampling the server's RSS. RSS
   growth counts from ``--warmup`` seconds on, and it is flat when it stays
   under 2 MiB or 2 %.

The server is this script in ``serve`` mode: a FastAPI app with
``events_router`` and a permissive authorize callback, under plain uvicorn
(one process, asyncio loop, not under dtc-otel-run). The SSE clients are raw
asyncio sockets in the measuring process, so a delivery's latency includes
the time this process takes to read it. Client, server and PostgreSQL share
the machine's cores.

The script creates a database of its own on the server given by
``--admin-url``, applies the ``dtc_audit`` migrations, and drops it when it
ends. Every process it starts is stopped by its PID. Results are printed as a
table and written as JSON to ``benchmarks/results/``.

Usage (from the repository root, with the venv's bin first on PATH):

    python benchmarks/live_latency.py                       # 60 s soak
    python benchmarks/live_latency.py --duration 600        # the 10-minute soak
    python benchmarks/live_latency.py --duration 120 --soak-interval 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

SCHEMA = "dtc_audit"
RESULTS = Path(__file__).resolve().parent / "results"
CHANNEL = "dtc_otel_bench_live"
SERVER_START_TIMEOUT = 30.0
CONNECT_BATCH = 100
# The event_id field of an event's JSON data, as dtc_otel.live encodes it.
EVENT_ID = re.compile(rb'"event_id":"([^"]+)"')
# Goals the results are judged against.
SSE_P99_GOAL_MS = 3.0
FANOUT_P99_GOAL_MS = 100.0
# Soak RSS counts as flat when it grows by less than this many MiB and this fraction.
FLAT_RSS_MIB = 2.0
FLAT_RSS_FRACTION = 0.02


# -- helpers ------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of *values* (fraction 0.5 for p50)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def summary_ms(latencies_ns: list[int]) -> dict[str, float]:
    values = [value / 1e6 for value in latencies_ns]
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 0.50), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "max_ms": round(max(values), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mib(pid: int) -> float:
    """Return the resident set size of process *pid* in MiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS line for process {pid}")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of process *pid*, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5) are utime and stime; the split above starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scratch_database(admin_url: str):
    """Create a database for this run, with the audit tables; drop it on exit."""
    from dtc_otel.audit._schema import apply_migrations

    name = f"dtc_otel_bench_live_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    try:
        apply_migrations(url, SCHEMA)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- 1. raw LISTEN/NOTIFY -------------------------------------------------------


def measure_listen_notify(url: str, samples: int, pause: float) -> dict[str, float]:
    """Time NOTIFY on one connection to its arrival on a LISTEN connection, one at a time."""
    latencies: list[int] = []
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as sender:
        listener.execute(f"LISTEN {CHANNEL}")
        for index in range(samples):
            started = time.perf_counter_ns()
            sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(index)))
            for notify in listener.notifies(timeout=5.0, stop_after=1):
                if notify.payload != str(index):
                    raise RuntimeError(f"unexpected notification {notify.payload!r}, expected {index}")
                latencies.append(time.perf_counter_ns() - started)
            if len(latencies) != index + 1:
                raise TimeoutError(f"notification {index} did not arrive within 5 s")
            time.sleep(pause)

    return summary_ms(latencies)


# -- the SSE server ---------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Run the measured app: events_router on one uvicorn process."""
    import uvicorn
    from fastapi import FastAPI

    from dtc_otel.live import Broadcaster, events_router

    raise_open_file_limit()
    broadcaster = Broadcaster(args.database_url, database_url=args.database_url, schema=SCHEMA)

    async def allow_all(request: Any, topics: list[str]) -> bool:
        return True

    app = FastAPI()
    app.include_router(events_router(broadcaster, authorize=allow_all))

    @app.get("/stats")
    async def stats() -> dict:
        return {"subscribers": broadcaster.subscriber_count, "ready": broadcaster.stats.connected}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=4096)


class Server:
    """This script in serve mode, as a child process stopped by its PID."""

    def __init__(self, url: str) -> None:
        self.port = free_port()
        self.log = open(RESULTS / "live_latency-server.log", "w")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, __file__, "serve", "--port", str(self.port), "--database-url", url]
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if self.stats()["ready"]:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the server did not start listening within {SERVER_START_TIMEOUT} s")

    def rss_mib(self) -> float:
        return rss_mib(self.process.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


# -- SSE clients --------------------------------------------------------------------


@dataclass
class Deliveries:
    """Receive times of events by event_id, filled by the clients."""

    sent_ns: dict[str, int] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)
    # The slowest delivery of each event so far: when its last subscriber had it.
    slowest_ns: dict[str, int] = field(default_factory=dict)
    received: int = 0
    waiters: list[tuple[int, asyncio.Future]] = field(default_factory=list)

    def record(self, event_id: str, received_ns: int) -> None:
        started = self.sent_ns.get(event_id)
        if started is None:
            return
        latency = received_ns - started
        self.latencies_ns.append(latency)
        if latency > self.slowest_ns.get(event_id, 0):
            self.slowest_ns[event_id] = latency
        self.received += 1
        if self.waiters and self.received >= self.waiters[0][0]:
            for target, waiter in self.waiters:
                if self.received >= target and not waiter.done():
                    waiter.set_result(None)

    async def wait_for(self, total: int, timeout: float) -> None:
        """Wait until *total* deliveries arrived; raise TimeoutError after *timeout* seconds."""
        if self.received >= total:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append((total, waiter))
        self.waiters.sort(key=lambda pair: pair[0])
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            self.waiters.remove((total, waiter))


class SseClient:
    """One SSE stream over a raw socket: HTTP/1.1 with chunked transfer encoding, parsed by hand."""

    def __init__(self, port: int, topic: str, deliveries: Deliveries) -> None:
        self.port = port
        self.topic = topic
        self.deliveries = deliveries
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task | None = None

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer = writer
        writer.write(
            f"GET /events?topic={self.topic} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"GET /events returned {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size + 2)
            received = time.perf_counter_ns()
            buffer += chunk[:-2]
            # A browser parses events in native code, each tab in its own
            # process. Here one process reads every stream, so it only finds
            # each complete event's ID instead of decoding its JSON.
            end = buffer.rfind(b"\r\n\r\n")
            if end < 0:
                continue
            complete, buffer = buffer[: end + 4], buffer[end + 4 :]
            for match in EVENT_ID.finditer(complete):
                self.deliveries.record(match[1].decode(), received)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
                await self.task
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


async def open_clients(port: int, topic: str, count: int, deliveries: Deliveries) -> list[SseClient]:
    clients = [SseClient(port, topic, deliveries) for _ in range(count)]
    for start in range(0, count, CONNECT_BATCH):
        await asyncio.gather(*(client.open() for client in clients[start : start + CONNECT_BATCH]))
    return clients


class Publisher:
    """The publishing connection, used from a worker thread so that the clients' reads do not delay the commits."""

    def __init__(self, url: str, topic: str, deliveries: Deliveries) -> None:
        from dtc_otel.audit._state import audit_state

        audit_state.schema = SCHEMA
        self.conn = psycopg.connect(url)
        self.topic = topic
        self.deliveries = deliveries

    def publish(self, count: int, pause: float = 0.0) -> None:
        from dtc_otel.live import publish

        for _ in range(count):
            event_id = publish(self.conn, self.topic, "bench")
            # Registered before the commit, so a delivery never arrives unknown.
            self.deliveries.sent_ns[event_id] = time.perf_counter_ns()
            self.conn.commit()
            if pause:
                time.sleep(pause)

    def close(self) -> None:
        self.conn.close()


# -- 2. NOTIFY to one SSE client ---------------------------------------------------


async def measure_sse_light(url: str, server: Server, samples: int, pause: float) -> dict[str, float]:
    deliveries = Deliveries()
    [client] = await open_clients(server.port, "bench:light", 1, deliveries)
    publisher = Publisher(url, "bench:light", deliveries)
    try:
        # One event at a time: the next is published after the previous arrived.
        for index in range(samples):
            await asyncio.to_thread(publisher.publish, 1)
            await deliveries.wait_for(index + 1, timeout=5)
            await asyncio.sleep(pause)
    finally:
        publisher.close()
        await client.close()

    return summary_ms(deliveries.latencies_ns)


# -- 3. many subscribers ------------------------------------------------------------


async def measure_fanout(url: str, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"subscribers": args.subscribers}
    await asyncio.sleep(1.0)
    result["rss_idle_mib"] = round(server.rss_mib(), 1)

    deliveries = Deliveries()
    started = time.monotonic()
    clients = await open_clients(server.port, "bench:fanout", args.subscribers, deliveries)
    result["connect_seconds"] = round(time.monotonic() - started, 2)
    deadline = time.monotonic() + 30
    while server.stats()["subscribers"] < args.subscribers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server has {server.stats()['subscribers']} of {args.subscribers} subscribers")
        await asyncio.sleep(0.1)
    result["rss_connected_mib"] = round(server.rss_mib(), 1)

    publisher = Publisher(url, "bench:fanout", deliveries)
    try:
        burst_total = args.burst_events * args.subscribers
        started = time.monotonic()
        server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
        await asyncio.to_thread(publisher.publish, args.burst_events)
        await deliveries.wait_for(burst_total, timeout=60)
        result["burst"] = {
            "events": args.burst_events,
            "all_delivered_seconds": round(time.monotonic() - started, 3),
            "server_cpu_seconds": round(server.cpu_seconds() - server_cpu, 2),
            "client_cpu_seconds": round(time.process_time() - client_cpu, 2),
            **summary_ms(deliveries.latencies_ns),
        }
        result["rss_after_burst_mib"] = round(server.rss_mib(), 1)

        result["soak"] = await soak(server, publisher, deliveries, burst_total, args)
    finally:
        publisher.close()
        for start in range(0, len(clients), CONNECT_BATCH):
            await asyncio.gather(*(client.close() for client in clients[start : start + CONNECT_BATCH]))

    deadline = time.monotonic() + 30
    while server.stats()["subscribers"] > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    result["subscribers_after_close"] = server.stats()["subscribers"]
    await asyncio.sleep(1.0)
    result["rss_after_close_mib"] = round(server.rss_mib(), 1)
    return result


async def soak(
    server: Server, publisher: Publisher, deliveries: Deliveries, already: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Keep the subscribers connected for --duration s, one event per --soak-interval s, sampling RSS."""
    # (seconds into the soak, server RSS in MiB, deliveries received so far)
    samples: list[tuple[float, float, int]] = []
    first_latency = len(deliveries.latencies_ns)
    burst_events = set(deliveries.slowest_ns)
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    started = time.monotonic()
    published = 0
    next_sample = started
    while time.monotonic() - started < args.duration:
        if time.monotonic() >= next_sample:
            samples.append((round(time.monotonic() - started, 1), round(server.rss_mib(), 1), deliveries.received))
            next_sample += args.rss_every
        await asyncio.to_thread(publisher.publish, 1)
        published += 1
        await asyncio.sleep(args.soak_interval)
    await deliveries.wait_for(already + published * args.subscribers, timeout=60)
    samples.append((round(time.monotonic() - started, 1), round(server.rss_mib(), 1), deliveries.received))

    # Per-stream sets and queues resize during the first events, so growth counts from the warm-up on.
    _, start_rss, start_delivered = next(sample for sample in samples if sample[0] >= args.warmup)
    _, end_rss, end_delivered = samples[-1]
    growth = end_rss - start_rss
    return {
        "seconds": args.duration,
        "events": published,
        "server_cpu_seconds": round(server.cpu_seconds() - server_cpu, 2),
        "client_cpu_seconds": round(time.process_time() - client_cpu, 2),
        "deliveries": summary_ms(deliveries.latencies_ns[first_latency:]),
        "last_subscriber_per_event": summary_ms(
            [latency for event_id, latency in deliveries.slowest_ns.items() if event_id not in burst_events]
        ),
        "rss_growth_bytes_per_delivery": round(growth * 2**20 / max(1, end_delivered - start_delivered), 1),
        "warmup_seconds": args.warmup,
        "rss_start_mib": samples[0][1],
        "rss_after_warmup_mib": start_rss,
        "rss_end_mib": end_rss,
        "rss_max_mib": max(rss for _, rss, _ in samples),
        "rss_growth_mib": round(growth, 1),
        "rss_flat": growth < max(FLAT_RSS_MIB, FLAT_RSS_FRACTION * start_rss),
        "rss_samples": samples,
    }


# -- the run ------------------------------------------------------------------------


async def measure_over_http(url: str, args: argparse.Namespace) -> dict[str, Any]:
    server = Server(url)
    try:
        await asyncio.to_thread(server.wait_ready)
        light = await measure_sse_light(url, server, args.sse_samples, args.pause)
        fanout = await measure_fanout(url, server, args)
    finally:
        server.stop()
    return {"sse_light": light, "fanout": fanout}


def machine(admin_url: str) -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with psycopg.connect(admin_url) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "postgresql": server_version,
    }


def print_table(results: dict[str, Any]) -> None:
    raw, light, fanout = results["listen_notify"], results["sse_light"], results["fanout"]
    burst, soaked = fanout["burst"], fanout["soak"]

    print("\n| measurement | samples | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| raw NOTIFY -> LISTEN | {raw['count']} | {raw['p50_ms']} | {raw['p99_ms']} | {raw['max_ms']} |")
    print(f"| COMMIT -> SSE client, 1 stream | {light['count']} | {light['p50_ms']} | {light['p99_ms']} | {light['max_ms']} |")
    print(
        f"| burst of {burst['events']} events -> {fanout['subscribers']} streams | {burst['count']} | "
        f"{burst['p50_ms']} | {burst['p99_ms']} | {burst['max_ms']} |"
    )
    deliveries, last = soaked["deliveries"], soaked["last_subscriber_per_event"]
    print(
        f"| soak, {soaked['events']} events -> {fanout['subscribers']} streams | {deliveries['count']} | "
        f"{deliveries['p50_ms']} | {deliveries['p99_ms']} | {deliveries['max_ms']} |"
    )
    print(
        f"| soak, last of {fanout['subscribers']} streams per event | {last['count']} | "
        f"{last['p50_ms']} | {last['p99_ms']} | {last['max_ms']} |"
    )

    print(
        f"\nCPU seconds, server / client: burst {burst['server_cpu_seconds']} / {burst['client_cpu_seconds']} "
        f"(all delivered after {burst['all_delivered_seconds']} s), soak {soaked['server_cpu_seconds']} / "
        f"{soaked['client_cpu_seconds']}"
    )
    print(
        f"server RSS MiB: idle {fanout['rss_idle_mib']}, {fanout['subscribers']} connected "
        f"{fanout['rss_connected_mib']}, after burst {fanout['rss_after_burst_mib']}, soak "
        f"{soaked['rss_start_mib']}, after {soaked['warmup_seconds']:.0f} s {soaked['rss_after_warmup_mib']}, "
        f"end {soaked['rss_end_mib']} (max {soaked['rss_max_mib']}, "
        f"{'flat' if soaked['rss_flat'] else 'growing'}, {soaked['rss_growth_bytes_per_delivery']} bytes per delivery), "
        f"after close {fanout['rss_after_close_mib']}"
    )

    print(
        f"goals: COMMIT -> SSE p99 < {SSE_P99_GOAL_MS} ms: {'met' if light['p99_ms'] < SSE_P99_GOAL_MS else 'MISSED'}; "
        f"{fanout['subscribers']} streams p99 < {FANOUT_P99_GOAL_MS} ms: "
        f"{'met' if burst['p99_ms'] < FANOUT_P99_GOAL_MS else 'MISSED'} (burst), "
        f"{'met' if deliveries['p99_ms'] < FANOUT_P99_GOAL_MS else 'MISSED'} (soak); "
        f"flat memory: {'met' if soaked['rss_flat'] else 'MISSED'}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="mode")
    serve_parser = sub.add_parser("serve", help="run the measured SSE server (started by the benchmark itself)")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--database-url", required=True)

    parser.add_argument(
        "--admin-url",
        default=os.environ.get("DTC_OTEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL URL to run CREATE DATABASE and DROP DATABASE with (default: %(default)s)",
    )
    parser.add_argument("--notify-samples", type=int, default=2000, help="raw NOTIFY samples (default: %(default)s)")
    parser.add_argument("--sse-samples", type=int, default=500, help="single-stream SSE samples (default: %(default)s)")
    parser.add_argument(
        "--pause", type=float, default=0.005, help="seconds between light-load samples (default: %(default)s)"
    )
    parser.add_argument("--subscribers", type=int, default=1000, help="concurrent SSE streams (default: %(default)s)")
    parser.add_argument("--burst-events", type=int, default=20, help="events in the burst (default: %(default)s)")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of the memory soak (default: %(default)s; 600 for 10 min)"
    )
    parser.add_argument(
        "--soak-interval", type=float, default=1.0, help="seconds between soak events (default: %(default)s)"
    )
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples (default: %(default)s)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="seconds of the soak before RSS growth is counted (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.mode is None:
        for name in ("notify_samples", "sse_samples", "subscribers", "burst_events"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1")
        if args.duration <= 0 or args.soak_interval <= 0 or args.rss_every <= 0 or args.pause < 0:
            parser.error("--duration, --soak-interval and --rss-every must be above 0, --pause at least 0")
        if not 0 <= args.warmup < args.duration - args.rss_every:
            parser.error("--warmup must be at least 0 and leave one --rss-every interval of the --duration")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "serve":
        serve(args)
        return 0

    RESULTS.mkdir(exist_ok=True)
    open_files = raise_open_file_limit()
    if open_files < args.subscribers + 100:
        print(
            f"the open-file limit is {open_files}, too low for {args.subscribers} streams: "
            "raise it with `ulimit -n`, or pass fewer --subscribers",
            file=sys.stderr,
        )
        return 2

    started = datetime.now(timezone.utc)
    with scratch_database(args.admin_url) as url:
        print(f"raw LISTEN/NOTIFY, {args.notify_samples} samples ...", file=sys.stderr)
        results: dict[str, Any] = {"listen_notify": measure_listen_notify(url, args.notify_samples, args.pause)}
        print(f"SSE at light load, then {args.subscribers} streams and a {args.duration:.0f} s soak ...", file=sys.stderr)
        results.update(asyncio.run(measure_over_http(url, args)))

    results["machine"] = machine(args.admin_url)
    results["arguments"] = {key: value for key, value in vars(args).items() if key not in ("mode", "admin_url")}
    results["started_at"] = started.isoformat(timespec="seconds")
    output = RESULTS / f"live_latency-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nraw results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
