"""Inbound webhooks: keep the raw body, verify the signature, detect duplicates, record the outcome.

:class:`WebhookReceiver` is a FastAPI dependency. It reads the body bytes
before anything parses them, verifies the signature, and writes the delivery
to ``webhook_logs`` before the handler runs, so a crash in the handler still
leaves the delivery on record. A delivery whose signature fails is recorded
and rejected with 401 before it reaches the handler. The status code the
handler returned, and its error if it raised, are added by the audit span
processor when the request's span ends.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from starlette.requests import Request

from dtc_otel._entities import bound_entities
from dtc_otel._redaction import redact
from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._state import audit_state
from dtc_otel.audit._verifiers import VerificationResult, WebhookVerifier
from dtc_otel.audit._batch import write_batch

__all__ = ["WebhookDelivery", "WebhookReceiver", "stored_headers"]

# Only these request headers are stored; the rest are named with a masked value.
_STORED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "user-agent",
        "host",
        "accept",
        "accept-encoding",
        "traceparent",
        "tracestate",
        "webhook-id",
        "webhook-timestamp",
        "x-request-id",
        "x-github-event",
        "x-github-delivery",
        "stripe-signature",
        "webhook-signature",
    }
)
# The status returned for a rejected delivery, by reason. Any other reason gets 401.
_REJECTION_STATUS = {"payload_too_large": 413, "unparsable_body": 400}
_SIGNATURE_HEADERS = frozenset({"stripe-signature", "webhook-signature", "x-hub-signature-256", "x-signature"})


def stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the headers as stored: allow-listed ones kept, signatures and everything else masked."""
    stored = {}
    for name, value in headers.items():
        key = name.lower()
        if key in _SIGNATURE_HEADERS:
            stored[key] = f"<{len(value)} characters>"
        elif key in _STORED_HEADERS:
            stored[key] = value
        else:
            stored[key] = "<masked>"

    return stored


@dataclass
class WebhookDelivery:
    """A verified delivery, handed to the route."""

    provider: str
    delivery_id: str
    body: bytes
    json: Any
    event_type: str | None
    provider_event_id: str | None
    duplicate: bool
    record_id: int
    verification: VerificationResult
    headers: dict[str, str] = field(repr=False, default_factory=dict)


def _lookup(payload: Any, path: str | Callable[[Any], Any] | None) -> str | None:
    if path is None or payload is None:
        return None
    if callable(path):
        value = path(payload)
    else:
        value = payload
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else str(value)


class WebhookReceiver:
    """FastAPI dependency for one webhook provider.

    **Parameters:**

    * **provider** - a short name stored in ``webhook_logs.provider``, such as ``payments``.
    * **verifier** - a :class:`WebhookVerifier`, such as ``StripeSignatureVerifier(secret)``.
    * **event_id** - where the provider's event ID is in the JSON body: a dotted path or a function.
    * **event_type** - the same for the event type.
    * **max_body_bytes** - larger bodies are rejected with 413 and recorded as ``payload_too_large``.
    """

    def __init__(
        self,
        provider: str,
        verifier: WebhookVerifier,
        *,
        event_id: str | Callable[[Any], Any] | None = "id",
        event_type: str | Callable[[Any], Any] | None = "type",
        max_body_bytes: int = 1_048_576,
    ) -> None:
        if not provider:
            raise ValueError("invalid provider='': give a short name such as 'payments'")
        if max_body_bytes <= 0:
            raise ValueError(f"invalid max_body_bytes={max_body_bytes}: expected a positive number of bytes")
        self.provider = provider
        self.verifier = verifier
        self.event_id = event_id
        self.event_type = event_type
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> WebhookDelivery:
        from fastapi import HTTPException

        headers = {key.lower(): value for key, value in request.headers.items()}
        delivery_id = str(uuid.uuid4())
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            body = b""
            result = VerificationResult(False, "payload_too_large", f"declared body of {declared} bytes is over the limit")
        else:
            body = await _read_body(request, self.max_body_bytes)
            if body is None:
                body = b""
                result = VerificationResult(False, "payload_too_large", f"body over {self.max_body_bytes} bytes")
            else:
                result = self.verifier.verify(headers, body)

        payload = None
        if result.valid:
            try:
                payload = json.loads(body)
            except ValueError:
                result = VerificationResult(False, "unparsable_body", "the signed body is not valid JSON")

        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("dtc.audit.type", "webhook")
            span.set_attribute("dtc.webhook.provider", self.provider)
            span.set_attribute("dtc.webhook.delivery_id", delivery_id)
            span.set_attribute("dtc.webhook.signature", result.reason)
        span_context = span.get_span_context()
        row = {
            "delivery_id": delivery_id,
            "provider": self.provider,
            "event_type": _lookup(payload, self.event_type),
            "provider_event_id": _lookup(payload, self.event_id),
            "raw_body": body,
            "headers": redact(stored_headers(headers)),
            "signature_valid": result.valid,
            "signature_reason": result.reason,
            "status_code": None if result.valid else _REJECTION_STATUS.get(result.reason, 401),
            "entity_ids": redact(dict(bound_entities())),
            "trace_id": format(span_context.trace_id, "032x") if span_context.is_valid else None,
        }
        record_id, duplicate_of = await asyncio.to_thread(_insert_delivery, row)

        if not result.valid:
            raise HTTPException(status_code=row["status_code"], detail=f"webhook rejected: {result.reason}")

        if duplicate_of is not None and span.is_recording():
            span.set_attribute("dtc.webhook.duplicate_of", duplicate_of)

        return WebhookDelivery(
            provider=self.provider,
            delivery_id=delivery_id,
            body=body,
            json=payload,
            event_type=row["event_type"],
            provider_event_id=row["provider_event_id"],
            duplicate=duplicate_of is not None,
            record_id=record_id,
            verification=result,
            headers=headers,
        )


async def _read_body(request: Any, limit: int) -> bytes | None:
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)

    return b"".join(chunks)


def _insert_delivery(row: dict[str, Any]) -> tuple[int, int | None]:
    """Insert the delivery; return its ID and, for a repeat of a handled event, the first one's ID.

    A repeat of an event whose earlier delivery failed (status 400 or more,
    or a handler error) is a retry, not a duplicate: the earlier row is marked
    ``superseded`` and the new one, with ``retry_of`` set, is processed.
    """
    from psycopg import errors, sql

    schema = sql.Identifier(audit_state.schema)
    columns = [
        "delivery_id", "provider", "event_type", "provider_event_id", "raw_body", "headers",
        "signature_valid", "signature_reason", "status_code", "entity_ids", "trace_id",
    ]  # fmt: skip
    insert = sql.SQL(
        "INSERT INTO {}.webhook_logs ({}, duplicate_of, received_at) VALUES ({}, %s, now()) RETURNING id"
    ).format(
        schema,
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    values = [json.dumps(row[c]) if c in ("headers", "entity_ids") else row[c] for c in columns]
    with audit_state.connection() as conn:
        try:
            with conn.transaction():
                record_id = conn.execute(insert, [*values, None]).fetchone()[0]
                _announce(conn, row, record_id, None)
                return record_id, None
        except errors.UniqueViolation:
            pass
        # Another delivery of this verified event came first.
        with conn.transaction():
            original, status_code, error = conn.execute(
                sql.SQL(
                    "SELECT id, status_code, processing_error FROM {}.webhook_logs WHERE provider = %s "
                    "AND provider_event_id = %s AND duplicate_of IS NULL AND signature_valid AND NOT superseded "
                    "FOR UPDATE"
                ).format(schema),
                (row["provider"], row["provider_event_id"]),
            ).fetchone()
            if (status_code is not None and status_code >= 400) or error is not None:
                conn.execute(sql.SQL("UPDATE {}.webhook_logs SET superseded = true WHERE id = %s").format(schema), (original,))
                record_id = conn.execute(insert, [*values, None]).fetchone()[0]
                conn.execute(sql.SQL("UPDATE {}.webhook_logs SET retry_of = %s WHERE id = %s").format(schema), (original, record_id))
                _announce(conn, row, record_id, None)
                return record_id, None
            record_id = conn.execute(insert, [*values, original]).fetchone()[0]
            _announce(conn, row, record_id, original)

    return record_id, original


def _announce(conn: Any, row: dict[str, Any], record_id: int, duplicate_of: int | None) -> None:
    # The audit_events row and NOTIFY for "received", in the insert's transaction.
    if duplicate_of is not None:
        status = "duplicate"
    elif row["signature_valid"]:
        status = "received"
    else:
        status = "rejected"
    event = AuditEvent(
        table="webhook_logs",
        row_id=row["delivery_id"],
        status=status,
        data={"row_written": True, "summary": {"provider": row["provider"], "event_type": row["event_type"],
                                               "signature": row["signature_reason"], "record_id": record_id}},
        entity_ids=row["entity_ids"],
        trace_id=row["trace_id"],
    )  # fmt: skip
    write_batch(conn, audit_state.schema, [event])
