"""dtc-otel: OpenTelemetry tracing and trace-correlated logs for FastAPI, httpx and psycopg services.

Run an unmodified app with ``dtc-otel-run python app.py``, or call
:func:`configure` at startup to set up the same thing in code.
"""

from __future__ import annotations

from dtc_otel._config import ConfigError, Settings, load_settings
from dtc_otel._entities import bind, bound, bound_entities, unbind
from dtc_otel._lifecycle import shutdown
from dtc_otel._logs import add_trace_ids
from dtc_otel._redaction import Redactor, redact, set_default_redactor
from dtc_otel._request_id import current_request_id
from dtc_otel._retry import RetryLog
from dtc_otel._setup import configure
from dtc_otel._summaries import summarize
from dtc_otel._version import __version__

__all__ = [
    "ConfigError",
    "Redactor",
    "RetryLog",
    "Settings",
    "__version__",
    "add_trace_ids",
    "bind",
    "bound",
    "bound_entities",
    "configure",
    "current_request_id",
    "load_settings",
    "redact",
    "set_default_redactor",
    "shutdown",
    "summarize",
    "unbind",
]

for _name in __all__:
    if _name == "__version__":
        continue
    globals()[_name].__module__ = "dtc_otel"
del _name
