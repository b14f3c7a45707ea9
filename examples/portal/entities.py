"""Bind entity IDs such as quote_id under one key for log lines and, with dtc-otel, spans.

With dtc-otel installed, ``dtc_otel.bind`` also puts the IDs on the current span
and every span below it. Without it, the portal still runs, and the IDs reach
the log lines through structlog's context variables.
"""

import structlog

try:
    from dtc_otel import bind
except ImportError:

    def bind(**entities: object) -> None:
        """Bind *entities* to structlog's context for the rest of the request."""
        structlog.contextvars.bind_contextvars(**entities)


__all__ = ["bind"]
