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
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from dtc_otel._redaction import MASK, default_redactor
from dtc_otel._summaries import summarize, summarize_if_large

__all__ = ["add_trace_ids", "configure_logging", "install_into_structlog_configure", "redact_event"]

_get_current_span = trace.get_current_span

# The last span context seen and its hex IDs. A request logs several lines
# from one span, so formatting the IDs once per span keeps this processor
# well under a microsecond per line.
_last_context: object = None
_last_ids: tuple[str, str] = ("", "")


def add_trace_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``trace_id`` (32 hex digits) and ``span_id`` (16) of the current span.

    Outside a valid span, neither key is added, so a line never carries an
    all-zero ID.
    """
    global _last_context, _last_ids

    context = _get_current_span().get_span_context()
    if context is not _last_context:
        if not context.is_valid:
            return event_dict
        _last_ids = (format(context.trace_id, "032x"), format(context.span_id, "016x"))
        _last_context = context

    event_dict["trace_id"], event_dict["span_id"] = _last_ids

    return event_dict


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
            event_dict[key] = masked if len(masked) <= limit or key == "exception" else summarize(masked)
        elif isinstance(value, (dict, list, tuple, set, bytes, bytearray)):
            event_dict[key] = summarize_if_large(redactor.redact(value), limit)

    return event_dict


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

    return structlog.processors.JSONRenderer()


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


_chain = _Chain()


def stdlib_formatter() -> logging.Formatter | None:
    """Return the formatter that renders stdlib records through the shared chain."""
    return _chain.formatter


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
