"""Shared fixtures: an OTLP receiver, a PostgreSQL database and a launcher for dtc-otel-run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from dtc_otel._receiver import OTLPReceiver

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Start every test without the OTEL_* and DTC_OTEL_* settings of the shell.

    The audit spool goes to the test's own folder, so that no test leaves
    spool files or health reports where the user's apps and ``dtc-otel doctor`` look.
    """
    for name in list(os.environ):
        if (name.startswith(("OTEL_", "DTC_OTEL_")) and name != "DTC_OTEL_TEST_DATABASE_URL") or name == "PYTHONPATH":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DTC_OTEL_AUDIT_SPOOL_DIR", str(tmp_path / "audit-spool"))


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as running:
        yield running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Launched:
    """A program started under dtc-otel-run, with its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [str(BIN / "dtc-otel-run"), *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def json_lines(self) -> list[dict]:
        with self._lock:
            lines = list(self.lines)
        records = []
        for line in lines:
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return records

    def wait_for_line(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen within {timeout} s; output:\n{self.output()}")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(5)
            raise AssertionError(f"process did not stop within {timeout} s; output:\n{self.output()}")


@pytest.fixture
def launch(receiver: OTLPReceiver) -> Iterator:
    """Start a command under dtc-otel-run, exporting to the test receiver."""
    started: list[Launched] = []

    def start(args: list[str], *, cwd: Path = APPS, **env: str) -> Launched:
        full_env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        launched = Launched(args, full_env, cwd)
        started.append(launched)
        return launched

    yield start

    for launched in started:
        if launched.process.poll() is None:
            launched.signal(signal.SIGKILL)
            launched.process.wait(5)


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _admin_url() -> str:
    return os.environ.get("DTC_OTEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server URL: DTC_OTEL_TEST_DATABASE_URL, the local server, or an embedded one."""
    url = _admin_url()
    if os.environ.get("DTC_OTEL_TEST_EMBEDDED") == "1":
        yield from _embedded_postgres()
        return
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        if "DTC_OTEL_TEST_DATABASE_URL" in os.environ:
            raise
        yield from _embedded_postgres()
        return

    yield url


def _embedded_postgres() -> Iterator[str]:
    from tests.embedded import embedded_postgres_url

    yield from embedded_postgres_url()


@pytest.fixture
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = f"dtc_otel_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlsplit(postgres_admin_url)._replace(path=f"/{name}").geturl()
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
