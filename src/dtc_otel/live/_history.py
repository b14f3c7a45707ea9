"""Reads of the durable log, ``audit_events``: catch-up after an outage, resume, truncated payloads."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql

from dtc_otel.live._events import LiveEvent

__all__ = ["EVENT_COLUMNS", "Page", "max_id", "read_after", "read_by_id", "read_by_ids", "read_range"]

EVENT_COLUMNS = "id, event_id, topic, source_table, row_id, status, entity_ids, trace_id, created_at"


def _entity_candidates(topic: str) -> list[dict[str, Any]]:
    """Return the ``entity_ids`` objects that put an event on *topic*.

    ``quote:44`` comes from the key ``quote_id`` or ``quote``, with 44 stored
    as a JSON number or a string. The SQL may match a little more than the
    live fan-out does, so rows are filtered again in Python.
    """
    prefix, separator, text = topic.partition(":")
    if not separator or not prefix or not text:
        return []

    values: list[Any] = [text]
    try:
        number: Any = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = None
    if number is not None and not (isinstance(number, float) and not math.isfinite(number)):
        values.append(number)

    return [{key: value} for key in (f"{prefix}_id", prefix) for value in values]


def _topic_filter(topics: frozenset[str] | None) -> tuple[sql.Composable, list[Any]]:
    if topics is None:
        return sql.SQL("TRUE"), []

    # One ``@>`` per candidate lets the GIN index on entity_ids serve each.
    clauses: list[sql.Composable] = [sql.SQL("topic = ANY(%s)")]
    params: list[Any] = [sorted(topics)]
    for topic in sorted(topics):
        for candidate in _entity_candidates(topic):
            clauses.append(sql.SQL("entity_ids @> %s::jsonb"))
            params.append(json.dumps(candidate))

    return sql.SQL("({})").format(sql.SQL(" OR ").join(clauses)), params


@dataclass(frozen=True)
class Page:
    """One page of the log: the matching events, and where the scan stopped."""

    events: list[LiveEvent]
    last_id: int | None
    complete: bool


async def read_after(
    conn: AsyncConnection[Any], schema: str, after_id: int, topics: frozenset[str] | None, limit: int
) -> Page:
    """Read up to *limit* rows with ``id > after_id`` on *topics* (None: all), in ID order.

    ``complete`` is true when fewer than *limit* rows matched, so no later
    page exists yet; otherwise read on from ``last_id``.
    """
    where, params = _topic_filter(topics)
    query = sql.SQL("SELECT {} FROM {}.audit_events WHERE id > %s AND {} ORDER BY id LIMIT %s").format(
        sql.SQL(EVENT_COLUMNS), sql.Identifier(schema), where
    )
    cursor = await conn.execute(query, [after_id, *params, limit])
    rows = await cursor.fetchall()
    events = [LiveEvent.from_row(row) for row in rows]
    last_id = events[-1].id if events else None
    if topics is not None:
        events = [event for event in events if not topics.isdisjoint(event.topics)]

    return Page(events, last_id, complete=len(rows) < limit)


async def read_range(
    conn: AsyncConnection[Any],
    schema: str,
    after_id: int,
    topics: frozenset[str] | None,
    *,
    page_size: int,
    max_events: int,
) -> tuple[list[LiveEvent], bool]:
    """Read the events after *after_id* page by page; return them and whether all were read.

    Stops once *max_events* rows were scanned, so one far-behind reader
    cannot pull an unbounded part of the log into memory.
    """
    events: list[LiveEvent] = []
    scanned = 0
    while True:
        limit = min(page_size, max_events - scanned)
        page = await read_after(conn, schema, after_id, topics, limit)
        events.extend(page.events)
        if page.complete or page.last_id is None:
            return events, True
        scanned += limit
        after_id = page.last_id
        if scanned >= max_events:
            return events, False


async def read_by_id(conn: AsyncConnection[Any], schema: str, audit_id: int) -> LiveEvent | None:
    """Return the event with this ID, or None when no such row exists."""
    query = sql.SQL("SELECT {} FROM {}.audit_events WHERE id = %s").format(
        sql.SQL(EVENT_COLUMNS), sql.Identifier(schema)
    )
    row = await (await conn.execute(query, [audit_id])).fetchone()

    return None if row is None else LiveEvent.from_row(row)


async def read_by_ids(conn: AsyncConnection[Any], schema: str, audit_ids: Iterable[int]) -> dict[int, LiveEvent]:
    """Return the events with these IDs, by ID; missing rows are left out."""
    query = sql.SQL("SELECT {} FROM {}.audit_events WHERE id = ANY(%s)").format(
        sql.SQL(EVENT_COLUMNS), sql.Identifier(schema)
    )
    rows = await (await conn.execute(query, [list(audit_ids)])).fetchall()

    return {event.id: event for event in map(LiveEvent.from_row, rows)}


async def max_id(conn: AsyncConnection[Any], schema: str) -> int:
    """Return the highest ID in the log, 0 when it is empty."""
    query = sql.SQL("SELECT coalesce(max(id), 0) FROM {}.audit_events").format(sql.Identifier(schema))
    row = await (await conn.execute(query)).fetchone()

    return int(row[0]) if row else 0
