"""Audit events: what the span processor and the API hand to the writer.

An event carries the absolute state of one row after a change (status,
attempt number, times), never a delta, so writing it twice leaves the same
row and a replay from the spool is safe.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AuditEvent", "NOTIFY_CHANNEL", "default_topic", "new_event_id"]

# The channel every audit event is announced on; payloads name the topic.
NOTIFY_CHANNEL = "dtc_otel_audit"

TABLES = ("job_queue", "webhook_logs", "audit_markers", "checkpoints", "audit_events")


def new_event_id() -> str:
    return str(uuid.uuid4())


def default_topic(table: str, row_id: str, entity_ids: dict[str, Any]) -> str:
    """Name the topic of an event: ``quote:44`` for the first entity ID, else ``job_queue:<id>``."""
    for key, value in entity_ids.items():
        return f"{key.removesuffix('_id')}:{value}"

    return f"{table}:{row_id}"


@dataclass(frozen=True)
class AuditEvent:
    """One change to one audit row, plus the ``audit_events`` entry that announces it.

    ``table`` names the row's table, and ``data`` contains that table's
    columns for this change. ``topic`` is what NOTIFY and the live stream filter on.
    """

    table: str
    row_id: str
    status: str | None
    data: dict[str, Any]
    entity_ids: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    topic: str = ""
    event_id: str = field(default_factory=new_event_id)
    occurred_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ValueError(f"invalid audit table {self.table!r}: expected one of {', '.join(TABLES)}")
        if not self.topic:
            object.__setattr__(self, "topic", default_topic(self.table, self.row_id, self.entity_ids))

    def to_json(self) -> str:
        """Serialise for the spool file; bytes become base64 so nothing is lost."""
        record = asdict(self)
        record["data"] = {key: _encode(value) for key, value in self.data.items()}

        return json.dumps(record, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, line: str) -> AuditEvent:
        record = json.loads(line)
        record["data"] = {key: _decode(value) for key, value in record["data"].items()}

        return cls(**record)


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}

    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__bytes__"}:
        return base64.b64decode(value["__bytes__"])

    return value
