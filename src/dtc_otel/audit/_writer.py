"""The background writer: audit events to PostgreSQL in batches, durable across outages.

The app's threads only append to a bounded in-memory queue. Writer threads
(two by default, each with its own connection) take batches from it and
write each batch, its ``audit_events`` rows and their ``pg_notify`` calls in
one transaction. A thread passes over the events of rows that another
thread is writing at that moment, so the events of one row are written in
order, and no thread waits while another has work queued. When
PostgreSQL is unreachable, the batch is retried with exponential backoff while
new events keep queueing. Once the queue is full, events spill to a local
spool file. Spooled events are written first when the database is back or
when the next process starts. Event IDs make every write idempotent, so an
event written twice (a batch that committed just before the connection
dropped) leaves one row.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from tenacity import wait_exponential

from dtc_otel._ratelimit import log_once_per_interval
from dtc_otel.audit._batch import write_transaction
from dtc_otel.audit._events import AuditEvent

__all__ = ["AuditWriter", "WriterStats", "process_alive"]

_logger = logging.getLogger("dtc_otel.audit")

_DEFAULT_MAX_QUEUE = 10_000
_DEFAULT_BATCH_SIZE = 500
_DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
_DEFAULT_CONNECTIONS = 2
# How often the writer wakes without new events, to replay the spool and
# report its health; short enough that a flush at exit is quick.
_IDLE_WAKE_SECONDS = 0.2
_HEALTH_INTERVAL_SECONDS = 5.0


class WriterStats:
    """Counters and gauges of one writer, read by metrics and ``dtc-otel doctor``."""

    def __init__(self) -> None:
        self.written = 0
        self.batches = 0
        self.last_batch_size = 0
        self.last_batch_ms = 0.0
        self.retries = 0
        self.spooled = 0
        self.replayed = 0
        self.dropped = 0
        self.connected = False

    def as_dict(self, queue_depth: int, spool_bytes: int) -> dict[str, Any]:
        return {
            "queue_depth": queue_depth,
            "spool_bytes": spool_bytes,
            "written": self.written,
            "batches": self.batches,
            "last_batch_size": self.last_batch_size,
            "last_batch_ms": round(self.last_batch_ms, 2),
            "retries": self.retries,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "dropped": self.dropped,
            "connected": self.connected,
        }


class AuditWriter:
    """Write audit events to PostgreSQL from background threads; see the module docstring.

    **Parameters:**

    * **database_url** - a ``postgresql://`` URL of the database holding the audit schema.
    * **schema** - the audit schema name (``dtc-otel migrate`` creates it).
    * **spool_dir** - where events wait on disk while PostgreSQL is unreachable.
    * **max_queue** - events held in memory before new ones go to the spool.
    * **batch_size** - events written per transaction at most.
    * **connections** - writer threads, each with its own connection. Two
      connections let PostgreSQL work on one batch while Python prepares the
      next: about 1.5 times the throughput of one on two cores
      (benchmarks/audit_writer.py).
    """

    def __init__(
        self,
        database_url: str,
        schema: str,
        spool_dir: str | os.PathLike[str],
        *,
        max_queue: int = _DEFAULT_MAX_QUEUE,
        batch_size: int = _DEFAULT_BATCH_SIZE,
        spool_max_bytes: int = _DEFAULT_SPOOL_MAX_BYTES,
        connections: int = _DEFAULT_CONNECTIONS,
    ) -> None:
        if max_queue <= 0 or batch_size <= 0:
            raise ValueError(f"max_queue and batch_size must be positive, got {max_queue} and {batch_size}")
        if not 1 <= connections <= 16:
            raise ValueError(f"invalid connections {connections}: expected 1 to 16 writer connections")

        self._url = database_url
        self._schema = schema
        self._spool_dir = Path(spool_dir)
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._spool_max_bytes = spool_max_bytes
        self._connections = connections
        self._wait = wait_exponential(multiplier=0.1, min=0.1, max=5.0)
        self._reset_state()

        # Fork safety: the child gets an empty queue and its own thread and
        # connection; events queued before the fork stay the parent's to write.
        self_ref = weakref.ref(self)

        def after_fork() -> None:
            writer = self_ref()
            if writer is not None:
                writer._reset_state()

        os.register_at_fork(after_in_child=after_fork)
        _register_metrics(self_ref)
        # dtc-otel doctor lists this writer from now on, not only once it has written.
        self._remove_stale_health()
        self._write_health()
        try:
            if self._spool_has_files():
                # Events an earlier process spooled are replayed now, not at this one's first event.
                self._start()
        except OSError:
            pass

    def _reset_state(self) -> None:
        # One queue for all writer threads, and one condition for the queue and every lane's state.
        self._queue: collections.deque[AuditEvent] = collections.deque()
        self._cond = threading.Condition()
        self._lanes = [_Lane(index) for index in range(self._connections)]
        # Set once by shutdown(); the writer threads read it without a lock.
        self._stopping = False
        self._spool_file: Any = None
        # The app's threads (queue full) and the writer threads (outage at
        # shutdown) all append to the spool file.
        self._spool_lock = threading.RLock()
        self._spool_path = self._spool_dir / f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._replay_due = True
        self._last_health = 0.0
        self._stats_lock = threading.Lock()
        self.stats = WriterStats()

    # -- the app's side -------------------------------------------------

    def enqueue(self, event: AuditEvent) -> None:
        """Queue *event* for writing, without waiting on the database and without raising.

        When the queue is full, the event is appended to the spool file on the
        caller's thread, which costs a buffered file write.
        """
        try:
            with self._cond:
                if self._stopping or len(self._queue) >= self._max_queue:
                    self._spool([event])
                    return
                self._queue.append(event)
                self._cond.notify()
            if self._lanes[0].thread is None:
                self._start()
        except Exception:  # noqa: BLE001 - the audit trail must never fail the app
            self._count("dropped", 1)
            log_once_per_interval(_logger, "audit event dropped", exc_info=True, dropped=self.stats.dropped)

    def _start(self) -> None:
        with self._cond:
            for lane in self._lanes:
                if lane.thread is not None:
                    continue
                lane.thread = threading.Thread(
                    target=self._run, args=(lane,), name=f"dtc-otel-audit-writer-{lane.index}", daemon=True
                )
                lane.thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written; return False on timeout."""
        if self._lanes[0].thread is None and self.queue_depth():
            self._start()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._pending_work():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))

        return True

    def _pending_work(self) -> bool:
        # The first lane replays the spool, and a replay it has yet to start counts as pending work.
        first = self._lanes[0]
        return bool(self._queue) or any(lane.busy for lane in self._lanes) or (first.thread is not None and self._replay_due)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Write what can be written within *timeout*, spool the rest, and stop.

        While PostgreSQL is unreachable the writer does not wait at all: at
        exit every second counts, and the spool keeps the events.
        """
        deadline = time.monotonic() + timeout
        while not self._failing() and (remaining := deadline - time.monotonic()) > 0:
            # In short steps, to stop waiting as soon as a write fails.
            if self.flush(min(remaining, 0.1)):
                break
        with self._cond:
            self._stopping = True
            leftover = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if leftover:
            self._spool(leftover)
        for lane in self._lanes:
            if lane.thread is not None:
                # The thread spools a batch it could not write once it finds the stop flag set.
                lane.thread.join(max(timeout, 1.0))
            if lane.thread is not None and lane.thread.is_alive() and lane.batch:
                # Still busy, for example in a connection attempt. The batch may be written as
                # well, which its event IDs make harmless.
                self._spool(list(lane.batch))
        self._close_spool()
        # A report from an exited process would only mislead dtc-otel doctor.
        try:
            (self._spool_dir / f"health-{os.getpid()}.json").unlink(missing_ok=True)
        except OSError:
            pass

    def _failing(self) -> bool:
        return not self.stats.connected and self.stats.retries > 0

    def queue_depth(self) -> int:
        return len(self._queue)

    def spool_bytes(self) -> int:
        try:
            return sum(path.stat().st_size for path in self._spool_dir.glob("spool-*.jsonl"))
        except OSError:
            return 0

    def _count(self, name: str, amount: int) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + amount)

    # -- the writer threads ---------------------------------------------

    def _run(self, lane: _Lane) -> None:
        # The writer's own queries must not show up as spans of the app.
        otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        # The first lane also replays the spool and reports health.
        first = lane.index == 0
        attempt = 0
        batch: list[AuditEvent] = []
        while True:
            with self._cond:
                if not batch:
                    batch = self._take_batch(lane)
                    while not batch and not self._stopping and not (first and self._replay_due):
                        self._cond.wait(_IDLE_WAKE_SECONDS)
                        if first:
                            self._write_health()
                            if self._spool_has_files():
                                self._replay_due = True
                        batch = self._take_batch(lane)
                    if self._stopping and not batch:
                        # shutdown() has taken the queue to spool it.
                        lane.busy = False
                        self._cond.notify_all()
                        return
                    # A replay counts as work too, so flush() waits for it.
                    lane.busy = bool(batch) or self._should_replay(first)
                    lane.batch = batch

            try:
                if self._should_replay(first):
                    self._replay_spool(lane)
                if batch:
                    self._write(lane, batch)
                    batch = []
                attempt = 0
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                attempt += 1
                self._drop_connection(lane)
                self._count("retries", 1)
                log_once_per_interval(
                    _logger, "audit writer cannot reach PostgreSQL; retrying", error=type(exc).__name__, attempt=attempt
                )
                if self._stopping:
                    self._spool(batch)
                    batch = []
                    continue
                with self._cond:
                    # The condition also wakes for new events and other lanes' batches, so
                    # wait out the whole backoff, unless shutdown() comes to spool the batch.
                    deadline = time.monotonic() + self._wait(_RetryState(attempt))
                    while not self._stopping and (remaining := deadline - time.monotonic()) > 0:
                        self._cond.wait(remaining)
                if self._stopping:
                    # No last attempt: it could wait out a connect timeout that exit cannot afford.
                    self._spool(batch)
                    batch = []
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
                log_once_per_interval(
                    _logger, "audit tables not found; run `dtc-otel migrate`. The batch is kept in the spool",
                    schema=self._schema, error=str(exc).splitlines()[0], spool=str(self._spool_dir),
                )  # fmt: skip
                self._spool(batch)
                batch = []
            except Exception:  # noqa: BLE001 - a bad event must not stop the writer
                # A batch the database rejects for another reason (a bug or a
                # schema mismatch) would fail forever; keep it on disk instead.
                log_once_per_interval(_logger, "audit batch rejected by PostgreSQL; spooled", exc_info=True)
                self._spool(batch)
                batch = []
            finally:
                with self._cond:
                    if not batch:
                        lane.busy = False
                        lane.rows.clear()
                        lane.batch = []
                    # Other lanes may have passed over this batch's rows, and flush() may wait.
                    self._cond.notify_all()
                if first:
                    # Also while busy or retrying, so that dtc-otel doctor shows a backlog as it grows.
                    self._write_health()

    def _take_batch(self, lane: _Lane) -> list[AuditEvent]:
        """Take up to a batch of events from the queue, passing over rows that other lanes are writing.

        Call with ``self._cond`` held. The events passed over stay at the
        front of the queue in their order, so a row's next event waits until
        the lane writing its earlier ones has committed them.
        """
        queue = self._queue
        busy = set().union(*(other.rows for other in self._lanes if other is not lane and other.rows))
        if not busy:
            batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        else:
            batch = []
            passed_over: list[AuditEvent] = []
            # Bounded, so a queue full of busy rows costs a short scan and not a copy of the whole queue.
            for _ in range(min(len(queue), 4 * self._batch_size)):
                event = queue.popleft()
                if (event.table, event.row_id) in busy:
                    passed_over.append(event)
                else:
                    batch.append(event)
                    if len(batch) == self._batch_size:
                        break
            queue.extendleft(reversed(passed_over))
        lane.rows = {(event.table, event.row_id) for event in batch}

        return batch

    def _should_replay(self, first: bool) -> bool:
        # Only the first lane replays, and not while stopping: the spool files
        # are then left for the next writer, which may be replaying them already.
        return first and self._replay_due and not self._stopping

    def _connection(self, lane: _Lane) -> psycopg.Connection[Any]:
        if lane.conn is None or lane.conn.closed:
            # Autocommit: write_transaction() sends BEGIN and COMMIT with its statements.
            lane.conn = psycopg.connect(
                self._url, autocommit=True, connect_timeout=5, application_name="dtc-otel-audit-writer"
            )
            if not self.stats.connected:
                _logger.info("audit writer connected to PostgreSQL")
            self.stats.connected = True
            self._replay_due = self._replay_due or self._spool_has_files()

        return lane.conn

    def _drop_connection(self, lane: _Lane) -> None:
        self.stats.connected = False
        if lane.conn is not None:
            try:
                lane.conn.close()
            except Exception:  # noqa: BLE001
                pass
        lane.conn = None

    def _write(self, lane: _Lane, batch: list[AuditEvent]) -> None:
        started = time.perf_counter()
        conn = self._connection(lane)
        write_transaction(conn, self._schema, batch)
        with self._stats_lock:
            self.stats.last_batch_ms = (time.perf_counter() - started) * 1000
            self.stats.last_batch_size = len(batch)
            self.stats.batches += 1
            self.stats.written += len(batch)

    # -- the spool --------------------------------------------------------

    def _spool(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        with self._spool_lock:
            self._spool_locked(events)

    def _spool_locked(self, events: list[AuditEvent]) -> None:
        try:
            if self._spool_file is None:
                self._spool_dir.mkdir(parents=True, exist_ok=True)
                self._spool_file = open(self._spool_path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            if self.spool_bytes() > self._spool_max_bytes:
                raise OSError(f"spool folder over its limit of {self._spool_max_bytes} bytes")
            for event in events:
                self._spool_file.write(event.to_json() + "\n")
            self._spool_file.flush()
            self._count("spooled", len(events))
        except OSError as exc:
            self._count("dropped", len(events))
            log_once_per_interval(
                _logger, "audit events dropped: spool not writable", error=str(exc), dropped=self.stats.dropped
            )

    def _close_spool(self) -> None:
        with self._spool_lock:
            if self._spool_file is not None:
                self._spool_file.close()
                self._spool_file = None

    def _spool_has_files(self) -> bool:
        return self._spool_dir.is_dir() and (any(self._spool_dir.glob("spool-*.jsonl")) or any(self._orphans()))

    def _orphans(self) -> Iterator[Path]:
        """Yield the files whose replay a process that has exited since had claimed: it died mid-replay."""
        for path in self._spool_dir.glob("replay-*.jsonl"):
            pid = path.name.split("-")[1]
            if pid.isdigit() and not process_alive(int(pid)):
                yield path

    def _claim_spool_files(self) -> Iterator[Path]:
        for orphan in self._orphans():
            try:
                # Back to its spool name, under which it is claimed below like any other.
                orphan.rename(orphan.with_name("spool-" + orphan.name.split("-", 2)[2]))
            except OSError:
                continue
        for path in sorted(self._spool_dir.glob("spool-*.jsonl")):
            claimed = path.with_name(path.name.replace("spool-", f"replay-{os.getpid()}-", 1))
            # Close and rename under the spool lock: an event spooled in between
            # would go into a file that is about to be read and deleted.
            with self._spool_lock:
                if path == self._spool_path:
                    self._close_spool()
                try:
                    # A rename is atomic, so two processes never replay one file.
                    path.rename(claimed)
                except OSError:
                    continue
            yield claimed

    def _replay_spool(self, lane: _Lane) -> None:
        self._replay_due = False
        if not self._spool_dir.is_dir():
            return
        for path in self._claim_spool_files():
            events = []
            with open(path, encoding="utf-8") as spool:
                for number, line in enumerate(spool, 1):
                    if not line.strip():
                        continue
                    try:
                        events.append(AuditEvent.from_json(line))
                    except (ValueError, TypeError, KeyError):
                        # A line cut short by a crash mid-write; the rest is good.
                        self._count("dropped", 1)
                        log_once_per_interval(_logger, "unreadable spool line skipped", file=path.name, line=number)
            try:
                for start in range(0, len(events), self._batch_size):
                    self._write(lane, events[start : start + self._batch_size])
            except Exception:
                # Put the file back so the next attempt finds it, under a new
                # name: the old one may be the spool file again by now, and a
                # rename onto it would replace the events spooled meanwhile.
                path.rename(path.with_name(f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"))
                self._replay_due = True
                raise
            self._count("replayed", len(events))
            path.unlink()
            _logger.info("audit writer replayed %d spooled events", len(events))

    # -- health -----------------------------------------------------------

    def _remove_stale_health(self) -> None:
        """Delete the health reports of writers whose process has exited, which a crash or a hard exit leaves behind."""
        try:
            for path in self._spool_dir.glob("health-*.json"):
                pid = path.stem.removeprefix("health-")
                if pid.isdigit() and not process_alive(int(pid)):
                    path.unlink(missing_ok=True)
        except OSError:
            pass

    def _write_health(self) -> None:
        now = time.monotonic()
        if now - self._last_health < _HEALTH_INTERVAL_SECONDS:
            return
        self._last_health = now
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            health = self.stats.as_dict(self.queue_depth(), self.spool_bytes())
            health["pid"] = os.getpid()
            health["updated_at"] = time.time()
            path = self._spool_dir / f"health-{os.getpid()}.json"
            path.write_text(json.dumps(health), encoding="utf-8")
        except OSError:
            pass


# Every writer of this process; the metric callbacks report their sum. The
# instruments are registered once, because the SDK keeps the callbacks of the
# first registration of a name and ignores later ones.
_live_writers: weakref.WeakSet[AuditWriter] = weakref.WeakSet()
_metrics_registered = False


def _register_metrics(writer_ref: weakref.ReferenceType[AuditWriter]) -> None:
    """Publish the writers' health as OpenTelemetry metrics, read when a metric reader collects."""
    global _metrics_registered

    writer = writer_ref()
    if writer is not None:
        _live_writers.add(writer)
    if _metrics_registered:
        return
    _metrics_registered = True

    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    meter = metrics.get_meter("dtc_otel.audit")

    def total(read: Any) -> Any:
        def callback(options: CallbackOptions) -> list[Observation]:
            return [Observation(sum(read(w) for w in list(_live_writers)))]

        return callback

    meter.create_observable_gauge("dtc_otel.audit.queue_depth", [total(lambda w: w.queue_depth())], unit="{event}",
                                  description="Audit events waiting in memory.")  # fmt: skip
    meter.create_observable_gauge("dtc_otel.audit.spool_size", [total(lambda w: w.spool_bytes())], unit="By",
                                  description="Bytes of audit events waiting in the spool folder.")  # fmt: skip
    meter.create_observable_gauge("dtc_otel.audit.batch_size", [total(lambda w: w.stats.last_batch_size)], unit="{event}",
                                  description="Events in the latest batch written.")  # fmt: skip
    meter.create_observable_gauge("dtc_otel.audit.batch_duration", [total(lambda w: w.stats.last_batch_ms / 1000)], unit="s",
                                  description="Time to write the latest batch.")  # fmt: skip
    for name, field_name, description in (
        ("dtc_otel.audit.events_written", "written", "Audit events written to PostgreSQL."),
        ("dtc_otel.audit.retries", "retries", "Failed batch writes that were retried."),
        ("dtc_otel.audit.events_spooled", "spooled", "Audit events written to the spool folder."),
        ("dtc_otel.audit.events_dropped", "dropped", "Audit events lost because the spool was full or unwritable."),
    ):
        meter.create_observable_counter(
            name, [total(lambda w, f=field_name: getattr(w.stats, f))], unit="{event}", description=description
        )


def process_alive(pid: int) -> bool:
    """Return whether a process with the ID *pid* exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # It exists, under another user.
        return True

    return True


class _Lane:
    """One writer thread's connection and state; see ``AuditWriter(connections=...)``."""

    def __init__(self, index: int) -> None:
        self.index = index
        # The (table, row ID) pairs of the batch this lane is writing, which other lanes pass over.
        self.rows: set[tuple[str, str]] = set()
        self.batch: list[AuditEvent] = []
        self.thread: threading.Thread | None = None
        self.conn: psycopg.Connection[Any] | None = None
        # True while the thread writes a batch it took from the queue.
        self.busy = False


class _RetryState:
    """The one field of tenacity's retry state that its wait strategies read."""

    def __init__(self, attempt: int) -> None:
        self.attempt_number = attempt
