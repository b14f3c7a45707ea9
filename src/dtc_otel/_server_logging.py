"""Route uvicorn's and gunicorn's own log lines through the shared processor chain.

Both servers install their own handlers and formatters when they start, after
dtc-otel has configured logging. This instrumentor wraps their logging setup
and swaps only the server's *default* formatters for the shared one, keeping
every handler (and its stream) in place. A user's own ``--log-config`` or
gunicorn ``logconfig`` uses other formatter classes and is left alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from dtc_otel import _logs

__all__ = ["ServerLoggingInstrumentor"]

_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access")


def _swap_default_formatters(default_classes: tuple[type, ...]) -> None:
    formatter = _logs.stdlib_formatter()
    if formatter is None:
        return

    for name in _SERVER_LOGGERS:
        chosen = _logs.access_formatter() if name == "uvicorn.access" else formatter
        for handler in logging.getLogger(name).handlers:
            current = handler.formatter
            # Exact class match: a subclass means the user customised it.
            if current is None or type(current) in default_classes:
                handler.setFormatter(chosen)


def _wrap(owner: type, attribute: str, default_classes: Callable[[], tuple[type, ...]]) -> None:
    original = getattr(owner, attribute)
    if getattr(original, "_dtc_otel_original", None) is not None:
        return

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        try:
            _swap_default_formatters(default_classes())
        except Exception:  # noqa: BLE001 - logging setup must never stop the server
            logging.getLogger("dtc_otel").warning("could not apply the dtc-otel log format to server loggers", exc_info=True)
        return result

    wrapper._dtc_otel_original = original  # type: ignore[attr-defined]
    setattr(owner, attribute, wrapper)


def _unwrap(owner: type, attribute: str) -> None:
    original = getattr(getattr(owner, attribute), "_dtc_otel_original", None)
    if original is not None:
        setattr(owner, attribute, original)


def _uvicorn_defaults() -> tuple[type, ...]:
    import uvicorn.logging

    return (uvicorn.logging.DefaultFormatter, uvicorn.logging.AccessFormatter)


def _gunicorn_defaults() -> tuple[type, ...]:
    # gunicorn's default handlers use a plain logging.Formatter.
    return (logging.Formatter,)


class ServerLoggingInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Give uvicorn's and gunicorn's default log lines the shared format and trace IDs."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        try:
            import uvicorn.config
        except ImportError:
            pass
        else:
            _wrap(uvicorn.config.Config, "configure_logging", _uvicorn_defaults)

        try:
            import gunicorn.glogging
        except ImportError:
            pass
        else:
            _wrap(gunicorn.glogging.Logger, "setup", _gunicorn_defaults)

    def _uninstrument(self, **kwargs: Any) -> None:
        try:
            import uvicorn.config
        except ImportError:
            pass
        else:
            _unwrap(uvicorn.config.Config, "configure_logging")

        try:
            import gunicorn.glogging
        except ImportError:
            pass
        else:
            _unwrap(gunicorn.glogging.Logger, "setup")
