"""Start and stop the fake partner API (partner.py) as a separate process."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import structlog

PARTNER_SCRIPT = Path(__file__).with_name("partner.py")
PARTNER_HOST = "127.0.0.1"
STOP_TIMEOUT_SECONDS = 5.0

log = structlog.get_logger()


def find_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def wait_until_listening(process: subprocess.Popen, port: int, timeout: float) -> None:
    """Poll until the partner accepts TCP connections on `port`.

    Raises RuntimeError if the process exits first and TimeoutError after `timeout` seconds.
    A plain TCP connect is used, not an HTTP request, so that readiness polling adds no spans.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"partner API exited with code {process.returncode} before listening on port {port}"
            )
        try:
            _, writer = await asyncio.open_connection(PARTNER_HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"partner API did not listen on port {port} within {timeout:.0f} s") from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


def stop_process(process: subprocess.Popen) -> None:
    """Terminate the partner process by PID and wait for it, killing it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("partner API did not stop in time, killing it", pid=process.pid)
            process.kill()
            process.wait()
    log.info("partner API stopped", pid=process.pid, exit_code=process.returncode)


@asynccontextmanager
async def run_partner(startup_timeout: float = 15.0) -> AsyncIterator[str]:
    """Run partner.py on a free loopback port and yield its base URL. Stop it on exit."""
    # NOTE: the port is free when picked but not reserved, so another process could take it
    # before the partner binds it. The partner then exits and startup fails with its exit code.
    port = find_free_port(PARTNER_HOST)
    env = dict(os.environ, OTEL_SDK_DISABLED="true")
    # A new session keeps Ctrl-C in the terminal from reaching the partner directly, so the
    # portal can finish in-flight partner calls before it stops the partner itself.
    # The partner reads its stdin until the pipe closes, so it also stops when
    # the portal is killed without a chance to stop it.
    process = subprocess.Popen(
        [sys.executable, str(PARTNER_SCRIPT), "--host", PARTNER_HOST, "--port", str(port), "--exit-with-parent"],
        env=env,
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    log.info("partner API starting", pid=process.pid, port=port)
    try:
        await wait_until_listening(process, port, startup_timeout)
        log.info("partner API ready", pid=process.pid, port=port)
        yield f"http://{PARTNER_HOST}:{port}"
    finally:
        await asyncio.to_thread(stop_process, process)
