"""Jobs: enqueue with trace context, run attempts inside job spans, retry, give up.

The span of each attempt carries only IDs and counters. The payload and the
error text travel beside the span to the audit processor, which writes them to
``job_queue`` and ``job_events`` and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
import uuid
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from dtc_otel._entities import bound_entities
from dtc_otel._retry import RetryLog
from dtc_otel.audit._events import AuditEvent
from dtc_otel.audit._state import audit_state

__all__ = ["JobAttempt", "enqueue", "job", "job_handler", "job_side_data"]

_tracer = trace.get_tracer("dtc_otel.audit")

# Data that must not be exported (the error text), kept beside each job span
# by span ID for the audit processor, which pops it when the span ends.
job_side_data: dict[int, dict[str, Any]] = {}

TRACE_KEY = "_trace"


def _trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def enqueue(
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    max_attempts: int = 1,
    job_id: str | None = None,
    conn: Any = None,
) -> str:
    """Record a pending job and return its ID.

    The current trace context goes into the payload under ``_trace``, so the
    worker's attempt span joins the same trace. With *conn* (a psycopg
    connection in a transaction), the row is written in that transaction and
    commits or rolls back with it; otherwise the background writer writes it.
    """
    if max_attempts < 1:
        raise ValueError(f"invalid max_attempts={max_attempts}: expected 1 or more")

    job_id = job_id or str(uuid.uuid4())
    payload = dict(payload or {})
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if carrier:
        payload[TRACE_KEY] = carrier
    event = AuditEvent(
        table="job_queue",
        row_id=job_id,
        status="pending",
        data={"kind": kind, "attempts": 0, "max_attempts": max_attempts, "payload": payload, "transition": "enqueued"},
        entity_ids=dict(bound_entities()),
        trace_id=_trace_id(),
    )
    if conn is not None:
        from dtc_otel.audit._record import record

        record(conn, event)
    else:
        audit_state.require_writer().enqueue(event)

    return job_id


class JobAttempt:
    """One attempt of a job, as a context manager (``with`` or ``async with``).

    On entry it opens the job span, and the audit processor records
    ``running``. On a clean exit it records ``succeeded``. On an exception it
    records the error and then ``retrying`` while attempts remain, ``dead``
    after the last one, or ``failed`` when *retryable* is false; the
    exception is re-raised.
    """

    def __init__(
        self,
        kind: str,
        *,
        job_id: str,
        attempt: int = 1,
        max_attempts: int = 1,
        payload: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> None:
        if attempt < 1 or max_attempts < 1:
            raise ValueError(f"invalid attempt={attempt}, max_attempts={max_attempts}: both must be 1 or more")
        self.kind = kind
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.retryable = retryable
        self._payload = payload or {}
        self._span: Any = None
        self._token: Any = None

    @property
    def outcome_on_error(self) -> str:
        if not self.retryable:
            return "failed"
        return "retrying" if self.attempt < self.max_attempts else "dead"

    def __enter__(self) -> JobAttempt:
        from opentelemetry import context

        carrier = self._payload.get(TRACE_KEY)
        parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
        links = None
        if parent is not None and trace.get_current_span().get_span_context().is_valid:
            # Already inside a trace (a job run inline): link to the enqueuer instead.
            links = [trace.Link(trace.get_current_span(parent).get_span_context())]
            parent = None
        self._span = _tracer.start_span(
            f"job {self.kind}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "dtc.audit.type": "job",
                "dtc.job.id": self.job_id,
                "dtc.job.kind": self.kind,
                "dtc.job.attempt": self.attempt,
                "dtc.job.max_attempts": self.max_attempts,
            },
        )
        self._token = context.attach(trace.set_span_in_context(self._span, parent))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        from opentelemetry import context

        try:
            if exc is not None:
                outcome = self.outcome_on_error
                if audit_state.writer is not None:
                    span_id = self._span.get_span_context().span_id
                    job_side_data[span_id] = {"error": f"{type(exc).__qualname__}: {exc}"[:500]}
                self._span.set_attribute("dtc.job.outcome", outcome)
                self._span.record_exception(exc)
                self._span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        finally:
            context.detach(self._token)
            # Ending the span hands the outcome to the audit processor.
            self._span.end()

    async def __aenter__(self) -> JobAttempt:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def job(
    kind: str,
    *,
    job_id: str | None = None,
    attempt: int = 1,
    max_attempts: int = 1,
    payload: dict[str, Any] | None = None,
    retryable: bool = True,
) -> JobAttempt:
    """Return a :class:`JobAttempt` context manager for one attempt of job *kind*."""
    return JobAttempt(
        kind,
        job_id=job_id or str(uuid.uuid4()),
        attempt=attempt,
        max_attempts=max_attempts,
        payload=payload,
        retryable=retryable,
    )


def job_handler(
    kind: str, *, max_attempts: int = 3, backoff: Callable[[int], float] = lambda attempt: min(0.1 * 2**attempt, 30.0)
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a job function ``fn(payload)`` to run each attempt in a job span, with retries.

    The wrapped function takes ``(payload, *, job_id=None)``; without a job ID
    a new one is made. *backoff* gives the seconds to wait after attempt N.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        retry_log = RetryLog(kind)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(payload: dict[str, Any], *, job_id: str | None = None) -> Any:
                job_id = job_id or str(uuid.uuid4())
                for attempt in range(1, max_attempts + 1):
                    try:
                        async with JobAttempt(kind, job_id=job_id, attempt=attempt, max_attempts=max_attempts, payload=payload):
                            result = await fn(payload)
                        retry_log.succeeded(attempt)
                        return result
                    except Exception as exc:
                        if attempt == max_attempts:
                            retry_log.gave_up(attempt, exc)
                            raise
                        retry_log.retrying(attempt, exc, backoff(attempt))
                        await asyncio.sleep(backoff(attempt))
                return None

            return run_async

        @functools.wraps(fn)
        def run(payload: dict[str, Any], *, job_id: str | None = None) -> Any:
            job_id = job_id or str(uuid.uuid4())
            for attempt in range(1, max_attempts + 1):
                try:
                    with JobAttempt(kind, job_id=job_id, attempt=attempt, max_attempts=max_attempts, payload=payload):
                        result = fn(payload)
                    retry_log.succeeded(attempt)
                    return result
                except Exception as exc:
                    if attempt == max_attempts:
                        retry_log.gave_up(attempt, exc)
                        raise
                    retry_log.retrying(attempt, exc, backoff(attempt))
                    time.sleep(backoff(attempt))
            return None

        return run

    return decorate
