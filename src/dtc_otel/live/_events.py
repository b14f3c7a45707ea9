"""Items delivered to subscribers: one ``LiveEvent`` per ``audit_events`` row, or a ``Resync`` marker."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["IdWindow", "LiveEvent", "RecentIds", "Resync", "entity_topic", "event_topics"]

# ``source_table`` of rows written by ``publish()``: their SSE event name is "state".
PUBLISHED_TABLE = "audit_events"


def entity_topic(key: str, value: Any) -> str:
    """Name the topic of one entity ID: ``quote_id=44`` becomes ``quote:44``.

    The same rule as ``dtc_otel.audit``'s default topic, so a subscriber of
    ``quote:44`` receives every event that carries ``quote_id`` 44.
    """
    return f"{key.removesuffix('_id')}:{value}"


def event_topics(topic: str, entity_ids: Mapping[str, Any]) -> frozenset[str]:
    """Return every topic an event is delivered on: its own and one per entity ID."""
    return frozenset([topic, *(entity_topic(key, value) for key, value in entity_ids.items())])


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One ``audit_events`` row as the live feed delivers it.

    ``trace_id`` and ``created_at`` are filled only when the event was read
    from the table (catch-up, resume, truncated NOTIFY payloads). The NOTIFY
    payload itself carries IDs and the status only.
    """

    id: int
    event_id: str
    topic: str
    table: str
    row_id: str
    status: str | None
    entity_ids: Mapping[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    created_at: datetime | None = None

    @property
    def topics(self) -> frozenset[str]:
        """The topics this event is delivered on; see :func:`event_topics`."""
        return event_topics(self.topic, self.entity_ids)

    @property
    def name(self) -> str:
        """The SSE event name: ``state`` for ``publish()`` events, else the audit table."""
        return "state" if self.table == PUBLISHED_TABLE else self.table

    def payload(self) -> dict[str, Any]:
        """Return the NOTIFY payload fields, the data of the SSE event."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "topic": self.topic,
            "table": self.table,
            "row_id": self.row_id,
            "status": self.status,
            "entity_ids": dict(self.entity_ids),
        }

    @classmethod
    def from_notify(cls, fields: Mapping[str, Any]) -> LiveEvent:
        """Build an event from a parsed, complete NOTIFY payload.

        Raises:
            KeyError, TypeError, ValueError: a field is missing or has the wrong type.
        """
        entity_ids = fields.get("entity_ids") or {}
        if not isinstance(entity_ids, dict):
            raise TypeError(f"entity_ids must be a JSON object, got {type(entity_ids).__name__}")

        return cls(
            id=int(fields["id"]),
            event_id=str(fields["event_id"]),
            topic=str(fields["topic"]),
            table=str(fields["table"]),
            row_id=str(fields["row_id"]),
            status=None if fields.get("status") is None else str(fields["status"]),
            entity_ids=entity_ids,
        )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> LiveEvent:
        """Build an event from a row of :data:`dtc_otel.live._history.EVENT_COLUMNS`."""
        audit_id, event_id, topic, table, row_id, status, entity_ids, trace_id, created_at = row
        if isinstance(entity_ids, str):
            entity_ids = json.loads(entity_ids)

        return cls(
            id=int(audit_id),
            event_id=str(event_id),
            topic=topic,
            table=table,
            row_id=row_id,
            status=status,
            entity_ids=entity_ids or {},
            trace_id=trace_id,
            created_at=created_at,
        )


@dataclass(frozen=True, slots=True)
class Resync:
    """A gap marker: events after ``after_id`` were not delivered to this subscriber.

    ``after_id`` is the ID of the last event delivered before the gap, or
    ``None`` when nothing was delivered yet. ``reason`` is ``slow_subscriber``
    (its queue was full), ``too_far_behind`` (a catch-up or resume stopped at
    its limit) or ``log_unreadable`` (the event log could not be read).
    """

    after_id: int | None
    reason: str

    name = "resync"

    def payload(self) -> dict[str, Any]:
        return {"after_id": self.after_id, "reason": self.reason}


class RecentIds:
    """The most recent *capacity* event IDs, to drop an event delivered twice.

    With several writers, IDs commit out of order, so catching up re-reads a
    range below the highest ID seen. The IDs remembered here keep the events
    of that range that were already delivered from going out again.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"invalid capacity {capacity}: expected at least 1")
        self._capacity = capacity
        self._order: deque[int] = deque()
        self._ids: set[int] = set()

    def __contains__(self, audit_id: object) -> bool:
        return audit_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, audit_id: int) -> bool:
        """Remember *audit_id*; return False when it was already remembered."""
        if audit_id in self._ids:
            return False

        self._ids.add(audit_id)
        self._order.append(audit_id)
        if len(self._order) > self._capacity:
            self._ids.discard(self._order.popleft())

        return True

    def update(self, audit_ids: Iterable[int]) -> None:
        for audit_id in audit_ids:
            self.add(audit_id)


class IdWindow:
    """The set of added IDs within *span* of the highest one, stored as one integer of *span* bits.

    A stream keeps one to skip an event that both a replay from the log and
    its live queue delivered. Unlike :class:`RecentIds` its size is fixed
    from the start (``span / 8`` bytes), so a thousand streams cost the same
    memory after a million events as after one.
    """

    def __init__(self, span: int) -> None:
        if span < 1:
            raise ValueError(f"invalid span {span}: expected at least 1")
        self._span = span
        self._mask = (1 << span) - 1
        self._top: int | None = None
        # Bit k set: the ID top - k was added.
        self._bits = 0

    def add(self, audit_id: int) -> bool:
        """Remember *audit_id*; return False when it was already added.

        An ID more than *span* below the highest one is outside the window
        and counts as new.
        """
        top = self._top
        if top is None or audit_id > top:
            shift = self._span if top is None else audit_id - top
            # A shift of span or more leaves nothing of the old window. The
            # guard also keeps a far jump from building a huge integer.
            self._bits = 1 if shift >= self._span else ((self._bits << shift) | 1) & self._mask
            self._top = audit_id
            return True

        offset = top - audit_id
        if offset >= self._span:
            return True
        bit = 1 << offset
        if self._bits & bit:
            return False
        self._bits |= bit

        return True
