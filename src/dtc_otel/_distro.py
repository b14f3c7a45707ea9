"""The ``opentelemetry_distro`` and ``opentelemetry_configurator`` entry points.

``dtc-otel-run`` starts the program under OpenTelemetry's own
auto-instrumentation bootstrap, which loads these two classes and then every
installed instrumentor through :meth:`DtcDistro.load_instrumentor`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _BaseConfigurator

from dtc_otel import _setup
from dtc_otel._propagation import httpx_hooks

__all__ = ["DtcConfigurator", "DtcDistro"]

_logger = logging.getLogger("dtc_otel")

# Upstream instrumentors that dtc-otel replaces with its own lean server span
# (see _starlette.py); loading both would trace every request twice.
_REPLACED = frozenset({"asgi", "fastapi", "starlette"})


class DtcDistro(BaseDistro):  # type: ignore[misc]
    """Load installed instrumentors with dtc-otel's options."""

    def _configure(self, **kwargs: Any) -> None:
        # Upstream instrumentations emit the old HTTP attribute names by
        # default. The stable names match the server spans of _starlette.py,
        # so one query works for both sides of a call.
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        settings = _setup.current_settings()
        if settings.disabled or entry_point.name in _REPLACED:
            _logger.debug("instrumentor %s not loaded", entry_point.name)
            return

        if entry_point.name == "httpx":
            kwargs.update(httpx_hooks())
        if entry_point.name == "psycopg":
            kwargs["enable_commenter"] = settings.sqlcommenter
            kwargs["capture_parameters"] = settings.capture_sql_parameters

        instrumentor = entry_point.load()
        instrumentor().instrument(**kwargs)


class DtcConfigurator(_BaseConfigurator):
    """Build the tracer provider, exporters and logging from the environment."""

    def _configure(self, **kwargs: Any) -> None:
        # dtc-otel-run checks the settings before starting the program. An
        # invalid value reaches this point only when the bootstrap was started
        # another way, and current_settings() then logs it and disables dtc-otel.
        settings = _setup.current_settings()
        if not settings.disabled:
            _setup.configure(settings)
