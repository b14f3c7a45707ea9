"""The audit side of the process state: the writer, the schema and a small connection pool."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dtc_otel.audit._writer import AuditWriter

__all__ = ["AuditState", "audit_state"]


class AuditState:
    """Set once by ``dtc_otel.configure`` when a database URL is configured."""

    def __init__(self) -> None:
        self.database_url: str | None = None
        self.schema = "dtc_audit"
        self.writer: AuditWriter | None = None
        self._pool: Any = None
        self._lock = threading.Lock()

    def require_url(self) -> str:
        if self.database_url:
            return self.database_url
        if os.environ.get("DTC_OTEL_DATABASE_URL"):
            # The setting is there, but nothing in this process has read it.
            raise RuntimeError(
                "dtc-otel audit is not configured in this process: DTC_OTEL_DATABASE_URL is set, but dtc-otel "
                "was not started; run the app under `dtc-otel-run`, or call dtc_otel.configure() at start-up "
                "(and run `dtc-otel migrate` once, if the audit tables do not exist yet)"
            )
        raise RuntimeError(
            "dtc-otel audit is not configured: DTC_OTEL_DATABASE_URL is not set; set it to a postgresql:// URL, "
            "run `dtc-otel migrate` once and start the app under `dtc-otel-run` (or call dtc_otel.configure()), "
            "or call dtc_otel.audit.configure(url) when the URL is only known at run time"
        )

    def pool(self) -> Any:
        """Return a small psycopg connection pool for the synchronous audit calls."""
        with self._lock:
            if self._pool is None or os.getpid() != self._pool_pid:
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    self.require_url(), min_size=0, max_size=4, open=True, name="dtc-otel-audit",
                    kwargs={"application_name": "dtc-otel-audit"},
                )  # fmt: skip
                self._pool_pid = os.getpid()
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Lend a pooled connection, turning a missing audit table into an error that names the fix."""
        import psycopg

        try:
            with self.pool().connection() as conn:
                yield conn
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise RuntimeError(
                f"audit tables not found in schema {self.schema!r} of the database at DTC_OTEL_DATABASE_URL: "
                f"run `dtc-otel migrate` once ({str(exc).splitlines()[0]})"
            ) from exc

    def require_writer(self) -> AuditWriter:
        if self.writer is None:
            self.require_url()
            self.writer = AuditWriter(
                self.database_url or "", self.schema, default_spool_dir(self.schema, self.database_url)
            )
        return self.writer


def default_spool_dir(schema: str, database_url: str | None) -> str:
    """Return the spool folder of *schema* in the database of *database_url*.

    Spooled events are replayed into whatever database the next writer of
    the folder uses, so each database gets its own folder: two apps on one
    host that write to different databases must not share one.
    """
    return os.path.join(tempfile.gettempdir(), f"dtc-otel-spool-{schema}-{database_key(database_url)}")


def database_key(database_url: str | None) -> str:
    """Return a short stable name for the database of *database_url*: its host, port and name, hashed."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(database_url or "")
        # libpq's defaults filled in, so that a URL with and without them names the same database.
        where = f"{params.get('host') or ''}:{params.get('port') or '5432'}/{params.get('dbname') or params.get('user') or ''}"
    except Exception:  # noqa: BLE001 - an unreadable URL fails later, where it is used
        where = database_url or ""
    return hashlib.sha256(where.encode()).hexdigest()[:10]


audit_state = AuditState()
