"""Log correlation: trace and span IDs on every structlog and stdlib log line.

:func:`add_trace_ids` is the structlog processor. :func:`configure_logging`
builds one processor chain and routes both structlog and stdlib ``logging``
through it, so uvicorn's lines and the app's lines look alike and carry the
same fields.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from dtc_otel._json import dumps
from dtc_otel._redaction import MASK, default_redactor
from dtc_otel._summaries import summarize, summarize_if_large

__all__ = ["add_trace_ids", "configure_logging", "install_into_structlog_configure", "redact_event"]

def _span_lookup() -> Any:
    # Reading OpenTelemetry's context variable directly saves three calls per
    # line over trace.get_current_span(); the public path is the fallback.
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.trace.propagation import _SPAN_KEY

        variable = _RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return lambda: trace.get_current_span()

    def current_span() -> Any:
        return variable.get().get(_SPAN_KEY)

    return current_span


_current_span = _span_lookup()

# Hex IDs by span, so each span's IDs are formatted once however many lines
# it logs, also when lines of concurrent requests interleave. Bounded: it is
# emptied when it reaches _ID_CACHE_SIZE entries.
_ids: dict[int, tuple[Any, str, str]] = {}
_ID_CACHE_SIZE = 1024


def add_trace_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``trace_id`` (32 hex digits) and ``span_id`` (16) of the current span.

    Outside a valid span, neither key is added, so a line never carries an
    all-zero ID.
    """
    span = _current_span()
    if span is None:
        return event_dict

    entry = _ids.get(id(span))
    if entry is None or entry[0] is not span:
        context = span.get_span_context()
        if not context.is_valid:
            return event_dict
        entry = (span, context.trace_id.to_bytes(16, "big").hex(), context.span_id.to_bytes(8, "big").hex())
        remember_ids(*entry)

    event_dict["trace_id"] = entry[1]
    event_dict["span_id"] = entry[2]

    return event_dict


def remember_ids(span: Any, trace_id: str, span_id: str) -> None:
    """Keep IDs already formatted for *span*, so its log lines reuse them."""
    if len(_ids) >= _ID_CACHE_SIZE:
        _ids.clear()
    _ids[id(span)] = (span, trace_id, span_id)


# Keys the chain itself adds; their values are never secrets and are not scanned.
_NOT_SCANNED = frozenset({"timestamp", "level", "logger", "trace_id", "span_id", "_record", "_from_structlog", "logger_name"})


class _RedactionSettings:
    max_value_bytes = 2048


_redaction_settings = _RedactionSettings()


def redact_event(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask secrets in every field of the line, and summarize values over the size limit.

    The message (``event``) is scanned for secret patterns but never masked
    whole; other fields are masked whole when their key names a secret.
    """
    redactor = default_redactor()
    limit = _redaction_settings.max_value_bytes
    for key, value in event_dict.items():
        if key in _NOT_SCANNED:
            continue
        if key != "event" and redactor.is_sensitive_key(key):
            if value not in (None, ""):
                event_dict[key] = MASK
            continue
        if isinstance(value, str):
            masked = redactor.redact_text(value)
            if len(masked) <= limit or key == "exception":
                event_dict[key] = masked
            elif key == "event":
                event_dict[key] = _head_and_tail(masked, limit)
            else:
                event_dict[key] = summarize(masked)
        elif isinstance(value, (dict, list, tuple, set, bytes, bytearray)):
            event_dict[key] = summarize_if_large(redactor.redact(value), limit)

    return event_dict


def _head_and_tail(message: str, limit: int) -> str:
    # A long message is often a traceback passed as text (uvicorn logs a
    # failed startup that way), and its last line names the error, so both
    # ends are kept rather than only the start.
    half = max(limit // 2, 1)
    return f"{message[:half]}\n... ({len(message) - 2 * half} of {len(message)} characters cut) ...\n{message[-half:]}"


# uvicorn's access line: 127.0.0.1:5000 - "GET /path?q=1 HTTP/1.1" 200
_ACCESS_LINE = re.compile(r'^(?P<client>\S+) - "(?P<method>\S+) (?P<path>\S+) HTTP/(?P<version>[\d.]+)" (?P<status>\d{3})')


_QUERY = re.compile(r"\?[^\s\"]*")


def _server_fields(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Tidy library lines: uvicorn's access lines become fields, and query strings go.

    A query string can carry tokens and signatures, so it is dropped from both
    the fields and the message. The ANSI ``color_message`` copy is dropped too.
    """
    record = event_dict.get("_record")
    if record is None:
        return event_dict
    if record.name == "httpx":
        # httpx logs every request's full URL; a query string can carry tokens.
        event_dict["event"] = _QUERY.sub("", str(event_dict.get("event", "")))
        return event_dict
    if not record.name.startswith("uvicorn"):
        return event_dict

    if "trace_id" not in event_dict and record.exc_info:
        # uvicorn logs an app's unhandled exception after the request's span
        # has ended; the middleware left the span's IDs on the exception.
        span_context = getattr(record.exc_info[1], "__dtc_otel_span_context__", None)
        if span_context is not None and span_context.is_valid:
            event_dict["trace_id"] = format(span_context.trace_id, "032x")
            event_dict["span_id"] = format(span_context.span_id, "016x")
        request_id = getattr(record.exc_info[1], "__dtc_otel_request_id__", None)
        if request_id is not None:
            event_dict.setdefault("request_id", request_id)

    event_dict.pop("color_message", None)
    if record.name != "uvicorn.access":
        return event_dict

    match = _ACCESS_LINE.match(str(event_dict.get("event", "")))
    if match is None:
        return event_dict

    path = match["path"].split("?", 1)[0]
    event_dict["event"] = f'{match["method"]} {path} {match["status"]}'
    event_dict["http_method"] = match["method"]
    event_dict["http_path"] = path
    event_dict["http_status"] = int(match["status"])
    event_dict["http_version"] = match["version"]
    event_dict["client_addr"] = match["client"]

    return event_dict


def _renderer(log_format: str) -> Any:
    if log_format == "auto":
        log_format = "console" if sys.stdout.isatty() else "json"
    if log_format == "console":
        return structlog.dev.ConsoleRenderer()

    return structlog.processors.JSONRenderer(serializer=_render_json)


def _render_json(event_dict: Any, **options: Any) -> str:
    # structlog passes its own default= handler, which is ignored: dumps
    # writes what JSON has no type for as str(value).
    return dumps(event_dict)


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]


class _Chain:
    """The processor chain built by :func:`configure_logging`, for later hooks."""

    formatter: logging.Formatter | None = None
    access_formatter: logging.Formatter | None = None


# The formatted date and time of the last second seen: access lines come many
# per second, and only the microseconds change between them.
_last_second: tuple[int, str] = (-1, "")


def _iso_utc(created: float) -> str:
    """Return *created* (seconds since the epoch) as ISO 8601 in UTC with microseconds, as the chain's TimeStamper."""
    global _last_second
    second = int(created)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    micros = min(round((created - second) * 1_000_000), 999_999)

    return f"{cached[1]}.{micros:06d}Z"


class JSONAccessFormatter(logging.Formatter):
    """Render uvicorn's access lines as JSON directly, with the same fields as the shared chain.

    Access lines come once per request, and the general processor chain cost
    about 30 us more per line than uvicorn's own formatter (measured with
    benchmarks/http_overhead.py). This builds the same fields in one pass: the
    query string is dropped, so no secret scan is needed beyond the path.
    """

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return _chain.formatter.format(record) if _chain.formatter is not None else super().format(record)

        client, method, full_path, http_version, status = args
        path = str(full_path).split("?", 1)[0]
        event: dict[str, Any] = {
            "event": f"{method} {path} {status}",
            "level": record.levelname.lower(),
            "timestamp": _iso_utc(record.created),
            "logger": record.name,
            "http_method": method,
            "http_path": default_redactor().redact_text(path),
            "http_status": status,
            "http_version": http_version,
            "client_addr": client,
        }
        for key, value in structlog.contextvars.get_contextvars().items():
            event.setdefault(key, value)
        add_trace_ids(None, "info", event)

        return dumps(event)


_chain = _Chain()


def stdlib_formatter() -> logging.Formatter | None:
    """Return the formatter that renders stdlib records through the shared chain."""
    return _chain.formatter


def access_formatter() -> logging.Formatter | None:
    """Return the formatter for uvicorn's access lines: the direct JSON one, or the shared chain's."""
    return _chain.access_formatter or _chain.formatter


def configure_logging(*, log_format: str, log_level: str, max_value_bytes: int = 2048) -> None:
    """Route structlog and stdlib logging through one chain with trace IDs.

    The app's own setup is respected. A root logger that already has handlers
    is left alone, and structlog is configured only when the app has not done
    so itself. A later ``structlog.configure`` call from the app keeps its own
    processors and gains :func:`add_trace_ids`.
    """
    _redaction_settings.max_value_bytes = max_value_bytes
    renderer = _renderer(log_format)
    shared = _shared_processors()
    level = logging.getLevelName(log_level)

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _server_fields,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
    )
    _chain.formatter = formatter
    _chain.access_formatter = JSONAccessFormatter() if isinstance(renderer, structlog.processors.JSONRenderer) else None

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        handler.set_name("dtc_otel")
        root.addHandler(handler)
        root.setLevel(level)

    if not structlog.is_configured():
        # Structlog lines render on their own and print straight to stdout:
        # going through stdlib logging for every line would cost several
        # microseconds more per line.
        structlog.configure(
            processors=[
                *shared,
                structlog.processors.StackInfoRenderer(),
                structlog.processors.format_exc_info,
                redact_event,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.WriteLoggerFactory(sys.stdout),
            cache_logger_on_first_use=True,
        )
    else:
        _insert_trace_processor(structlog.get_config())

    install_into_structlog_configure()


def _with_our_processors(processors: list[Any]) -> list[Any]:
    """Insert redaction and trace IDs before the app's renderer, unless already there."""
    if add_trace_ids in processors or not processors:
        return processors

    # Before the renderer, which turns the event dict into a string.
    return [*processors[:-1], redact_event, add_trace_ids, processors[-1]]


def _insert_trace_processor(config: dict[str, Any]) -> list[Any] | None:
    processors = list(config.get("processors") or [])
    updated = _with_our_processors(processors)
    if updated is processors:
        return None
    structlog.configure(processors=updated)

    return updated


_original_configure = structlog.configure


def install_into_structlog_configure() -> None:
    """Make every later ``structlog.configure(processors=...)`` keep the trace IDs."""
    if getattr(structlog.configure, "_dtc_otel", False):
        return

    def configure(*args: Any, **kwargs: Any) -> None:
        processors = kwargs.get("processors")
        if processors:
            kwargs["processors"] = _with_our_processors(list(processors))
        _original_configure(*args, **kwargs)

    configure._dtc_otel = True  # type: ignore[attr-defined]
    configure.__doc__ = _original_configure.__doc__
    structlog.configure = configure
    # ``structlog.configure`` is also reachable as ``structlog._config.configure``.
    structlog._config.configure = configure  # type: ignore[attr-defined]
