"""Process lifecycle: bounded flush at exit and on SIGTERM, and fork safety.

The SDK's own exit hook waits as long as the exporter retries, which with the
collector down is many seconds. Here shutdown runs on a helper thread and the
process waits at most ``DTC_OTEL_SHUTDOWN_TIMEOUT`` seconds for it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

__all__ = ["install"]

_logger = logging.getLogger("dtc_otel")

_FAILING_EXPORT_WAIT = 1.0


class _Lifecycle:
    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.timeout = 5.0
        self.after_fork: list[Callable[[], None]] = []
        # Steps that run before the provider's shutdown, each bounded by its own timeout (the audit writer's).
        self.before_shutdown: list[Callable[[], None]] = []
        # False when the user set service.instance.id themselves.
        self.owns_instance_id = True
        self.export_failing: Callable[[], bool] = lambda: False
        self._done = threading.Event()

    def shutdown(self) -> None:
        """Flush and shut down the provider, waiting at most ``timeout`` seconds."""
        provider = self.provider
        if provider is None or self._done.is_set():
            return
        self._done.set()

        # First, because the provider's shutdown can be cut short by the timeout
        # below while an export retries, and the audit writer must spool in time.
        started = time.monotonic()
        for hook in self.before_shutdown:
            try:
                hook()
            except Exception:  # noqa: BLE001 - exit goes on
                _logger.warning("shutdown step failed; the exit goes on", exc_info=True)

        # With the collector already failing, the final export would most
        # likely fail too, so the process waits one second at most for it.
        failing = self.export_failing()
        # The steps above count against the timeout, but the spans still get a second.
        remaining = max(self.timeout - (time.monotonic() - started), min(self.timeout, _FAILING_EXPORT_WAIT))
        timeout = min(remaining, _FAILING_EXPORT_WAIT) if failing else remaining
        worker = threading.Thread(target=_shutdown_quietly, args=(provider,), name="dtc-otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive() and failing:
            _logger.info("collector unreachable at exit; the last spans were not exported")
        elif worker.is_alive():
            _logger.warning(
                "telemetry flush did not finish within %.1f s; exiting without it "
                "(set DTC_OTEL_SHUTDOWN_TIMEOUT to wait longer)",
                timeout,
            )

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.shutdown()
        # Die from the signal as the process would have without this handler,
        # so supervisors see the same exit status.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def reinit_after_fork(self) -> None:
        self._done = threading.Event()
        provider = self.provider
        if provider is not None and self.owns_instance_id:
            _give_new_instance_id(provider.resource)
        for callback in self.after_fork:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the child must start even if telemetry cannot
                _logger.warning("telemetry reinitialisation after fork failed", exc_info=True)


def _shutdown_quietly(provider: TracerProvider) -> None:
    try:
        provider.shutdown()
    except Exception:  # noqa: BLE001
        _logger.debug("tracer provider shutdown failed", exc_info=True)


def _give_new_instance_id(resource: Resource) -> None:
    # Every tracer holds a reference to this one Resource object, so the new
    # ID is set on the object itself rather than on a copy.
    # NOTE: this replaces the SDK's private ``_attributes`` field; it is
    # checked by the gunicorn --preload test against the pinned SDK release.
    attributes = dict(resource.attributes or {})
    attributes["service.instance.id"] = str(uuid.uuid4())
    attributes["process.pid"] = os.getpid()
    fresh = Resource(attributes, resource.schema_url)
    resource._attributes = fresh._attributes  # type: ignore[attr-defined]


_lifecycle = _Lifecycle()


def install(
    provider: TracerProvider,
    *,
    timeout: float,
    after_fork: list[Callable[[], None]],
    owns_instance_id: bool,
    export_failing: Callable[[], bool] = lambda: False,
    before_shutdown: list[Callable[[], None]] | None = None,
) -> None:
    """Register the bounded exit flush, the SIGTERM handler and the fork hook for *provider*."""
    _lifecycle.provider = provider
    _lifecycle.owns_instance_id = owns_instance_id
    _lifecycle.export_failing = export_failing
    _lifecycle.timeout = timeout
    _lifecycle.after_fork = after_fork
    _lifecycle.before_shutdown = before_shutdown or []

    atexit.register(_lifecycle.shutdown)
    os.register_at_fork(after_in_child=_lifecycle.reinit_after_fork)

    # Only where no SIGTERM handler is installed yet: servers such as uvicorn install
    # their own handler, shut down gracefully, then re-raise the signal, which
    # lands here and flushes.
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _lifecycle.on_sigterm)


def shutdown() -> None:
    """Flush pending spans and shut down, bounded by the configured timeout."""
    _lifecycle.shutdown()
