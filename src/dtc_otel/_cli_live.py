"""``dtc-otel tail``: print live audit events in the terminal, one line each."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

__all__ = ["add_live_commands", "main"]

# Details for a batch of events are read in one query; this caps its size.
_MAX_BATCH = 500


def add_live_commands(commands: Any) -> None:
    """Register ``tail`` on the ``dtc-otel`` subcommand parser."""
    tail = commands.add_parser("tail", help="print live audit events, one line each, until Ctrl-C")
    tail.add_argument(
        "--topic",
        action="append",
        metavar="TOPIC",
        help="follow TOPIC, such as quote:44; repeat for more (default: every event)",
    )
    tail.add_argument(
        "--database-url",
        help="PostgreSQL URL, direct to the server (default: DTC_OTEL_LISTEN_DATABASE_URL, else DTC_OTEL_DATABASE_URL)",
    )
    tail.add_argument("--schema", help="audit schema (default: DTC_OTEL_AUDIT_SCHEMA or dtc_audit)")
    tail.add_argument("--json", action="store_true", help="print one JSON object per event instead of columns")
    tail.set_defaults(handler=_cmd_tail)


def _cmd_tail(options: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="dtc-otel tail: %(message)s")

    from dtc_otel.live._broadcaster import Broadcaster, check_topics
    from dtc_otel.live._settings import DATABASE_URL_ENV, LISTEN_URL_ENV

    try:
        check_topics(options.topic)
    except ValueError as exc:
        print(f"dtc-otel tail: {exc}", file=sys.stderr)
        return 2
    broadcaster = Broadcaster(options.database_url, database_url=options.database_url, schema=options.schema)
    try:
        broadcaster.database_urls()
    except ValueError:
        print(
            f"dtc-otel tail: no database: pass --database-url postgresql://..., or set {LISTEN_URL_ENV} "
            f"or {DATABASE_URL_ENV}",
            file=sys.stderr,
        )
        return 2

    try:
        return asyncio.run(_tail(broadcaster, options))
    except BrokenPipeError:
        # The reader (such as `head`) has gone; that is a normal end.
        return 0


async def _tail(broadcaster: Any, options: argparse.Namespace) -> int:
    from dtc_otel.live._events import Resync

    subscription = broadcaster.subscribe(options.topic, max_queue=10_000)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Closing the subscription ends the loop below, which then stops cleanly.
        loop.add_signal_handler(signum, subscription.close)

    details = _Details(broadcaster)
    await broadcaster.start()
    try:
        if not await broadcaster.wait_ready(10.0):
            print("dtc-otel tail: cannot reach PostgreSQL yet; retrying, and events follow once connected", file=sys.stderr)
        following = ", ".join(options.topic) if options.topic else "every event"
        print(f"dtc-otel tail: following {following}; press Ctrl-C to stop", file=sys.stderr, flush=True)

        async for first in subscription:
            batch = [first]
            while len(batch) < _MAX_BATCH and (item := subscription.get_nowait()) is not None:
                batch.append(item)
            events = [item for item in batch if not isinstance(item, Resync)]
            found = await details.fetch([event.id for event in events])
            for item in batch:
                print(_format(item, found, options.json), flush=True)
    finally:
        await details.close()
        await broadcaster.stop()

    return 0


class _Details:
    """A reader of ``created_at`` and ``trace_id``, which NOTIFY payloads leave out, with its own connection."""

    def __init__(self, broadcaster: Any) -> None:
        self._broadcaster = broadcaster
        self._conn: Any = None

    async def fetch(self, audit_ids: list[int]) -> dict[int, Any]:
        import psycopg

        from dtc_otel.live._history import read_by_ids

        if not audit_ids:
            return {}
        try:
            if self._conn is None or self._conn.closed:
                _, url = self._broadcaster.database_urls()
                self._conn = await psycopg.AsyncConnection.connect(
                    url, autocommit=True, connect_timeout=5, application_name="dtc-otel-tail"
                )
            return await read_by_ids(self._conn, self._broadcaster.schema, audit_ids)
        except (psycopg.Error, OSError):
            # The line is still printed, with "-" for the time and trace ID.
            await self.close()
            return {}

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _format(item: Any, found: dict[int, Any], as_json: bool) -> str:
    from dtc_otel.live._events import Resync

    if isinstance(item, Resync):
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        if as_json:
            return json.dumps({"time": now, "resync": True, **item.payload()})
        return f"{now}  resync  events after id {item.after_id} were skipped ({item.reason})"

    row = found.get(item.id, item)
    created_at = row.created_at.astimezone(timezone.utc).isoformat(timespec="milliseconds") if row.created_at else None
    if as_json:
        return json.dumps({"time": created_at, **item.payload(), "trace_id": row.trace_id}, default=str)
    columns = (created_at, item.topic, item.table, item.row_id, item.status, row.trace_id)

    return "  ".join("-" if value is None else str(value) for value in columns)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the live subcommands on their own, until ``dtc-otel`` registers them."""
    parser = argparse.ArgumentParser(prog="dtc-otel", description="dtc-otel live events.")
    add_live_commands(parser.add_subparsers(dest="command", required=True))
    options = parser.parse_args(argv)

    return int(options.handler(options))


if __name__ == "__main__":
    sys.exit(main())
