"""Measure the HTTP overhead of dtc-otel-run and upstream opentelemetry-instrument.

Each round starts every variant on a fresh uvicorn process (one worker) on
127.0.0.1 with a free port, warms it up and then runs ``wrk --latency`` against
``benchmarks/app.py``. The order of the variants rotates from round to round.
Exporting variants send OTLP/HTTP to ``benchmarks/sink.py``, a local sink
started for that run. The script prints a Markdown table of the medians over
the rounds and writes all raw numbers to ``benchmarks/results/``.

Every process it starts is stopped by its PID when the run ends, also on
Ctrl-C, SIGTERM or an error.

Usage (from the repository root, with the venv's bin first on PATH):

    python benchmarks/http_overhead.py --rounds 3 --duration 10

With ``--source-rev HEAD`` the servers import ``dtc_otel`` from a snapshot of
that commit, so edits to the working tree during a run do not change it.
``--gc-stats`` adds garbage collector pauses per run, and ``--no-access-log``
turns uvicorn's access log off in every variant.

Needs ``wrk`` on PATH and the ``bench`` extra (``pip install -e '.[bench]'``)
for the upstream variants.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
SINK_SCRIPT = HERE / "sink.py"
GC_WRAPPER = HERE / "uvicorn_gc.py"
SOURCE_DIR = HERE.parent / "src" / "dtc_otel"
# The venv's scripts (uvicorn, dtc-otel-run, opentelemetry-instrument) sit
# next to the interpreter that runs this script.
BIN_DIR = Path(sys.executable).parent

REQUEST_PATH = "/items/42"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# The goal for the dtc-otel variant with OTLP export, relative to bare.
GOAL_MIN_RPS_RATIO = 0.70
GOAL_MAX_P99_RATIO = 2.0

# Upstream's distro also loads dtc-otel's own instrumentors, because they are
# installed in the same venv, unless they are disabled by name.
UPSTREAM_ENV = {
    "OTEL_PYTHON_DISTRO": "distro",
    "OTEL_PYTHON_CONFIGURATOR": "configurator",
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "dtc_starlette,dtc_server_logging",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
}
DTC_ENV = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
}


@dataclass(frozen=True)
class Variant:
    """One way of starting the app: a launcher prefix, extra environment, and whether it exports."""

    name: str
    description: str
    launcher: tuple[str, ...]
    env: dict[str, str]
    exports: bool


VARIANTS = {
    "bare": Variant("bare", "uvicorn, no OpenTelemetry", (), {}, exports=False),
    "upstream": Variant(
        "upstream",
        "opentelemetry-instrument, OTLP/HTTP export",
        ("opentelemetry-instrument",),
        {**UPSTREAM_ENV, "OTEL_TRACES_EXPORTER": "otlp"},
        exports=True,
    ),
    "dtc-otel": Variant(
        "dtc-otel",
        "dtc-otel-run, OTLP/HTTP export",
        ("dtc-otel-run",),
        {**DTC_ENV, "OTEL_TRACES_EXPORTER": "otlp"},
        exports=True,
    ),
    "upstream-noexport": Variant(
        "upstream-noexport",
        "opentelemetry-instrument, OTEL_TRACES_EXPORTER=none",
        ("opentelemetry-instrument",),
        {**UPSTREAM_ENV, "OTEL_TRACES_EXPORTER": "none"},
        exports=False,
    ),
    "dtc-otel-noexport": Variant(
        "dtc-otel-noexport",
        "dtc-otel-run, OTEL_TRACES_EXPORTER=none",
        ("dtc-otel-run",),
        {**DTC_ENV, "OTEL_TRACES_EXPORTER": "none"},
        exports=False,
    ),
}


# -- process handling ---------------------------------------------------------


@dataclass
class ProcessRegistry:
    """Every process this script started, so each can be stopped by PID."""

    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(args, **kwargs)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM to *process*, then SIGKILL after *timeout* seconds, and return its exit code."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"process {process.pid} did not stop after SIGTERM in {timeout:.0f} s; sending SIGKILL", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        if process in self.processes:
            self.processes.remove(process)
        return process.returncode

    def stop_all(self) -> None:
        for process in list(reversed(self.processes)):
            self.stop(process)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_ready(url: str, process: subprocess.Popen[Any], timeout: float = READY_TIMEOUT_S) -> bytes:
    """Poll *url* until it returns HTTP 200, and return the body.

    Raises RuntimeError if the server exits or is not ready within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server process {process.pid} exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return bytes(response.read())
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = str(exc)
        time.sleep(0.1)

    raise RuntimeError(f"server at {url} not ready after {timeout:.0f} s: {last_error}")


def cpu_seconds(pid: int) -> float:
    """Return user plus system CPU time of *pid* (all its threads) in seconds, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name in brackets may contain spaces, so split after it.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])

    return ticks / os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float:
    """Return the CPU time stolen by the hypervisor from all CPUs since boot, in seconds, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    steal = int(fields[8]) if len(fields) > 8 else 0

    return steal / os.sysconf("SC_CLK_TCK")


# -- wrk ----------------------------------------------------------------------

_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL_LINE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),", re.MULTILINE)
_NON_2XX_LINE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS_LINE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str) -> dict[str, Any]:
    """Parse requests/s, request count, latency percentiles (ms) and errors from ``wrk --latency`` output."""
    rps = _RPS_LINE.search(output)
    total = _TOTAL_LINE.search(output)
    percentiles = {f"p{match[1]}_ms": float(match[2]) * _UNIT_TO_MS[match[3]] for match in _PERCENTILE_LINE.finditer(output)}
    if rps is None or total is None or "p99_ms" not in percentiles:
        raise ValueError(f"could not parse the wrk output:\n{output}")

    result: dict[str, Any] = {
        "rps": float(rps[1]),
        "requests": int(total[1]),
        "duration_s": float(total[2]) * _UNIT_TO_MS[total[3]] / 1000.0,
        **percentiles,
        "non_2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }
    non_2xx = _NON_2XX_LINE.search(output)
    if non_2xx:
        result["non_2xx"] = int(non_2xx[1])
    errors = _SOCKET_ERRORS_LINE.search(output)
    if errors:
        result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups())))

    return result


def run_wrk(registry: ProcessRegistry, url: str, *, duration: float, threads: int, connections: int) -> tuple[str, dict[str, Any]]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    process = registry.start(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        registry.stop(process)
        raise RuntimeError(f"wrk did not finish within {duration + 30:.0f} s") from None
    registry.stop(process)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed with exit code {process.returncode}:\n{output}")

    return output, parse_wrk(output)


# -- one run ------------------------------------------------------------------


def variant_env(
    variant: Variant,
    endpoint: str | None,
    gc_stats_file: Path | None,
    gc_freeze_after: float | None,
    source_root: Path | None,
) -> dict[str, str]:
    # Start from a clean slate: no OTEL_* or DTC_OTEL_* setting of the caller
    # may change a variant.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "DTC_OTEL_"))}
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    if source_root is not None:
        # Ahead of the editable install's path, so dtc_otel is imported from the snapshot.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source_root), env.get("PYTHONPATH", "")]))
    env.update(variant.env)
    if variant.launcher:
        env["OTEL_SERVICE_NAME"] = "benchmark-app"
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    if gc_stats_file is not None:
        env["GC_STATS_FILE"] = str(gc_stats_file)
        if gc_freeze_after is not None:
            env["GC_FREEZE_AFTER_S"] = f"{gc_freeze_after:g}"

    return env


def server_args(variant: Variant, port: int, access_log: bool, gc_stats: bool) -> list[str]:
    uvicorn_args = ["app:app", "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)]
    if not access_log:
        uvicorn_args.append("--no-access-log")
    # The launchers look the command up on PATH, which starts with BIN_DIR.
    command = ["python", str(GC_WRAPPER)] if gc_stats else ["uvicorn"]
    if not variant.launcher:
        return [str(BIN_DIR / command[0]), *command[1:], *uvicorn_args]

    return [str(BIN_DIR / variant.launcher[0]), *variant.launcher[1:], *command, *uvicorn_args]


def start_sink(registry: ProcessRegistry) -> tuple[subprocess.Popen[str], str]:
    process = registry.start(
        [sys.executable, str(SINK_SCRIPT), "--port", "0", "--count-spans"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        registry.stop(process)
        error_output = process.stderr.read() if process.stderr else ""
        raise RuntimeError(f"the OTLP sink exited before it started listening: {error_output}")

    return process, json.loads(line)["listening"]


def stop_sink(registry: ProcessRegistry, process: subprocess.Popen[str]) -> dict[str, Any]:
    registry.stop(process)
    assert process.stdout is not None
    lines = [line for line in process.stdout.read().splitlines() if line.strip()]
    if not lines:
        return {"error": "the sink printed no totals"}

    return dict(json.loads(lines[-1]))


def count_log_lines(path: Path) -> dict[str, int]:
    lines = 0
    app_lines = 0
    with_trace_id = 0
    with path.open("rb") as log:
        for line in log:
            lines += 1
            if b'"item read"' in line:
                app_lines += 1
                if b'"trace_id"' in line:
                    with_trace_id += 1

    return {"lines": lines, "app_lines": app_lines, "app_lines_with_trace_id": with_trace_id}


def full_collections_in(collections: list[list[float]], start: float, end: float) -> dict[str, float]:
    """Count the full collections that started between *start* and *end* (epoch seconds)."""
    pauses = [pause_ms for started, pause_ms in collections if start <= started <= end]

    return {"collections": len(pauses), "total_ms": sum(pauses), "max_ms": max(pauses, default=0.0)}


def run_variant(
    registry: ProcessRegistry, variant: Variant, options: argparse.Namespace, log_dir: Path, round_index: int
) -> dict[str, Any]:
    """Start one fresh server for *variant*, load it with wrk, stop it, and return the measurements."""
    sink = None
    endpoint = None
    result: dict[str, Any] = {"variant": variant.name, "round": round_index}
    # Hashed for every run, because the sources may change while a long run goes on.
    result["dtc_otel_sources_sha256"] = sources_sha256(options.source_root or SOURCE_DIR.parent)
    if variant.exports:
        sink, endpoint = start_sink(registry)
        result["sink_cpu_s_start"] = cpu_seconds(sink.pid)

    port = free_port()
    url = f"http://127.0.0.1:{port}{REQUEST_PATH}"
    log_path = log_dir / f"{variant.name}-{round_index}.log"
    gc_stats_file = log_dir / f"{variant.name}-{round_index}.gc.json" if options.gc_stats else None
    try:
        with log_path.open("wb") as log:
            server = registry.start(
                server_args(variant, port, options.access_log, options.gc_stats),
                env=variant_env(variant, endpoint, gc_stats_file, options.gc_freeze_after, options.source_root),
                cwd=HERE,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            body = wait_until_ready(url, server)
            result["response"] = json.loads(body)
            run_wrk(registry, url, duration=options.warmup, threads=options.threads, connections=options.connections)
            cpu_before = cpu_seconds(server.pid)
            steal_before = steal_seconds()
            result["measured_from_epoch_s"] = time.time()
            wrk_output, wrk = run_wrk(registry, url, duration=options.duration, threads=options.threads, connections=options.connections)
            cpu_after = cpu_seconds(server.pid)
            result["measured_until_epoch_s"] = time.time()
            result["steal_s"] = steal_seconds() - steal_before
        finally:
            result["server_exit_code"] = registry.stop(server)
        result.update(wrk)
        result["wrk_output"] = wrk_output
        result["server_cpu_s"] = cpu_after - cpu_before
        result["server_cpu_us_per_request"] = (cpu_after - cpu_before) / wrk["requests"] * 1e6
        result["log"] = count_log_lines(log_path)
        if gc_stats_file is not None:
            # The per-generation counts cover the server's whole life: startup,
            # warmup and the measured run.
            result["gc"] = json.loads(gc_stats_file.read_text())
            result["gc"]["full_collections_measured"] = full_collections_in(
                result["gc"].get("full_collections", []), result["measured_from_epoch_s"], result["measured_until_epoch_s"]
            )
    finally:
        if sink is not None:
            sink_cpu = cpu_seconds(sink.pid) if sink.poll() is None else None
            sink_cpu_start = result.pop("sink_cpu_s_start")
            result["sink"] = stop_sink(registry, sink)
            if sink_cpu is not None:
                result["sink"]["cpu_s"] = sink_cpu - sink_cpu_start
        with contextlib.suppress(FileNotFoundError):
            if not options.keep_logs:
                log_path.unlink()

    return result


# -- summary ------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Return per variant the medians over the rounds and the ratios to the bare variant."""
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [run for run in runs if run["variant"] == name]
        if not rows:
            continue
        entry: dict[str, Any] = {
            "rounds": len(rows),
            "rps_median": statistics.median(row["rps"] for row in rows),
            "rps_min": min(row["rps"] for row in rows),
            "rps_max": max(row["rps"] for row in rows),
            "p50_ms_median": statistics.median(row["p50_ms"] for row in rows),
            "p99_ms_median": statistics.median(row["p99_ms"] for row in rows),
            "p99_ms_min": min(row["p99_ms"] for row in rows),
            "p99_ms_max": max(row["p99_ms"] for row in rows),
            "server_cpu_us_per_request_median": statistics.median(row["server_cpu_us_per_request"] for row in rows),
            "errors": sum(row["non_2xx"] + sum(row["socket_errors"].values()) for row in rows),
        }
        gcs = [row["gc"]["generations"] for row in rows if "gc" in row]
        if gcs:
            entry["gc"] = {
                generation: {
                    "collections_median": statistics.median(gc.get(generation, {}).get("collections", 0) for gc in gcs),
                    "total_ms_median": statistics.median(gc.get(generation, {}).get("total_ms", 0.0) for gc in gcs),
                    "max_ms_median": statistics.median(gc.get(generation, {}).get("max_ms", 0.0) for gc in gcs),
                }
                for generation in ("0", "1", "2")
            }
            measured = [row["gc"]["full_collections_measured"] for row in rows if "gc" in row]
            entry["gc"]["2_measured"] = {
                "collections_median": statistics.median(item["collections"] for item in measured),
                "total_ms_median": statistics.median(item["total_ms"] for item in measured),
                "max_ms_median": statistics.median(item["max_ms"] for item in measured),
            }
        entry["steal_s_median"] = statistics.median(row.get("steal_s", 0.0) for row in rows)
        sinks = [row["sink"] for row in rows if "sink" in row]
        if sinks:
            entry["export_requests_median"] = statistics.median(sink.get("requests", 0) for sink in sinks)
            entry["export_bytes_median"] = statistics.median(sink.get("bytes", 0) for sink in sinks)
            spans = [sink["spans"] for sink in sinks if sink.get("spans") is not None]
            if spans:
                entry["exported_spans_median"] = statistics.median(spans)
        summary[name] = entry

    bare = summary.get("bare")
    if bare:
        for entry in summary.values():
            entry["rps_ratio"] = entry["rps_median"] / bare["rps_median"]
            entry["p99_ratio"] = entry["p99_ms_median"] / bare["p99_ms_median"]

    return summary


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    header = (
        "| Variant | req/s (median) | req/s range | vs bare | p50 ms | p99 ms (median) | p99 range ms "
        "| p99 vs bare | server CPU us/req | export requests | export MB |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    rows = []
    for name, entry in summary.items():
        exports = "-"
        megabytes = "-"
        if "export_requests_median" in entry:
            exports = f"{entry['export_requests_median']:.0f}"
            megabytes = f"{entry['export_bytes_median'] / 1e6:.1f}"
        rows.append(
            f"| {name} | {entry['rps_median']:.0f} | {entry['rps_min']:.0f}-{entry['rps_max']:.0f} "
            f"| {entry.get('rps_ratio', float('nan')):.2f}x | {entry['p50_ms_median']:.2f} "
            f"| {entry['p99_ms_median']:.2f} | {entry['p99_ms_min']:.2f}-{entry['p99_ms_max']:.2f} "
            f"| {entry.get('p99_ratio', float('nan')):.2f}x | {entry['server_cpu_us_per_request_median']:.0f} "
            f"| {exports} | {megabytes} |"
        )

    return header + "\n".join(rows) + "\n"


def gc_table(summary: dict[str, dict[str, Any]]) -> str:
    if not any("gc" in entry for entry in summary.values()):
        return ""
    lines = [
        "| Variant | gen 0 collections | gen 1 collections | gen 2 collections | gen 2 in measured run | "
        "gen 2 total ms, measured run | gen 2 longest ms, measured run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in summary.items():
        gc = entry.get("gc")
        if gc is None:
            continue
        measured = gc["2_measured"]
        lines.append(
            f"| {name} | {gc['0']['collections_median']:.0f} | {gc['1']['collections_median']:.0f} "
            f"| {gc['2']['collections_median']:.0f} | {measured['collections_median']:.0f} "
            f"| {measured['total_ms_median']:.1f} | {measured['max_ms_median']:.1f} |"
        )

    return "\n".join(lines) + "\n"


def export_check_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Describe, per exporting run, what the sink received compared to the requests served."""
    lines = []
    for run in runs:
        sink = run.get("sink")
        if sink is None:
            continue
        spans = sink.get("spans")
        log = run.get("log", {})
        served = log.get("app_lines")
        per_request = f"{spans / served:.2f}" if spans is not None and served else "n/a"
        if not spans or not sink.get("requests"):
            lines.append(f"- WARNING: {run['variant']} round {run['round']}: the sink received no spans, so export did not run")
        lines.append(
            f"- {run['variant']} round {run['round']}: {sink.get('requests', 0)} export requests, "
            f"{sink.get('bytes', 0) / 1e6:.1f} MB, {spans} spans for {served} app log lines "
            f"({per_request} spans per request), sink CPU {sink.get('cpu_s', float('nan')):.2f} s"
        )

    return lines


def goal_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    entry = summary.get("dtc-otel")
    if entry is None or "rps_ratio" not in entry:
        return ["goal: not checked (needs both the bare and dtc-otel variants)"]
    rps_ok = entry["rps_ratio"] >= GOAL_MIN_RPS_RATIO
    p99_ok = entry["p99_ratio"] <= GOAL_MAX_P99_RATIO

    return [
        f"goal throughput: dtc-otel {entry['rps_ratio']:.2f}x bare (needs >= {GOAL_MIN_RPS_RATIO:.2f}x): {'met' if rps_ok else 'NOT met'}",
        f"goal p99: dtc-otel {entry['p99_ratio']:.2f}x bare (needs <= {GOAL_MAX_P99_RATIO:.1f}x): {'met' if p99_ok else 'NOT met'}",
    ]


# -- environment --------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {},
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
        info["wrk"] = (wrk.stdout + wrk.stderr).splitlines()[0].strip()
    for package in (
        "dtc-otel",
        "fastapi",
        "starlette",
        "uvicorn",
        "structlog",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-instrumentation",
        "opentelemetry-instrumentation-asgi",
        "opentelemetry-instrumentation-fastapi",
        "opentelemetry-distro",
        "uvloop",
        "httptools",
    ):
        try:
            info["packages"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info["packages"][package] = None

    return info


def sources_sha256(source_root: Path) -> str:
    """Return a SHA-256 over the names and contents of every ``.py`` file of ``dtc_otel`` under *source_root*."""
    package = source_root / "dtc_otel"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())

    return digest.hexdigest()


def snapshot_sources(rev: str, directory: Path) -> Path:
    """Extract ``src/dtc_otel`` as committed at *rev* into *directory*, and return the ``src`` folder to import from."""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, "src/dtc_otel"],
            cwd=HERE.parent,
            capture_output=True,
            timeout=60,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        sys.exit(f"git archive of src/dtc_otel at {rev!r} failed: {exc.stderr.decode(errors='replace').strip()}")
    tar_path = directory / "sources.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(directory, filter="data")

    return directory / "src"


def imported_dtc_otel_file(env: dict[str, str]) -> str:
    """Return the path of the dtc_otel package that the servers will import with *env*."""
    probe = subprocess.run(
        [sys.executable, "-c", "import dtc_otel; print(dtc_otel.__file__)"],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        sys.exit(f"importing dtc_otel failed: {probe.stderr.strip()}")

    return probe.stdout.strip()


def source_fingerprint(source_root: Path | None, rev: str | None) -> dict[str, Any]:
    """Identify the dtc_otel code that was measured: git commit, uncommitted changes, and a hash of the sources."""
    fingerprint: dict[str, Any] = {"sources_sha256": sources_sha256(source_root or SOURCE_DIR.parent)}
    if rev is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            commit = subprocess.run(["git", "rev-parse", rev], cwd=HERE, capture_output=True, text=True, timeout=10, check=False)
            fingerprint["git_commit"] = commit.stdout.strip()
            fingerprint["snapshot_of_rev"] = rev
            fingerprint["uncommitted_source_changes"] = False
        return fingerprint

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10, check=False)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", str(SOURCE_DIR)], cwd=HERE, capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode == 0:
            fingerprint["git_commit"] = head.stdout.strip()
            fingerprint["uncommitted_source_changes"] = bool(status.stdout.strip())

    return fingerprint


def check_tools(variants: list[Variant]) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found on PATH; install it (for example: apt-get install wrk)")
    for launcher in {variant.launcher[0] for variant in variants if variant.launcher} | {"uvicorn"}:
        if not (BIN_DIR / launcher).exists():
            hint = " (install the bench extra: pip install -e '.[bench]')" if launcher == "opentelemetry-instrument" else ""
            sys.exit(f"{launcher} not found in {BIN_DIR}{hint}")


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare HTTP throughput and latency of bare uvicorn, dtc-otel-run and opentelemetry-instrument.")
    parser.add_argument("--rounds", type=int, default=3, help="number of rounds, each running every variant once (default: 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per run (default: 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load before each run (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default: 32)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated variants to run (default: all of {', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="pass --no-access-log to uvicorn in every variant (default: uvicorn's access log is on)",
    )
    parser.add_argument(
        "--gc-stats",
        action="store_true",
        help="start uvicorn through benchmarks/uvicorn_gc.py and report garbage collector pauses per run",
    )
    parser.add_argument(
        "--gc-freeze-after",
        type=float,
        metavar="SECONDS",
        help="with --gc-stats: call gc.freeze() in the server this many seconds after it starts",
    )
    parser.add_argument(
        "--source-rev",
        metavar="REV",
        help="measure dtc_otel as committed at this git revision (extracted to a temporary folder) "
        "instead of the working tree, so edits made during the run do not change it",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep each server's output under benchmarks/results/logs-*/")
    parser.add_argument("--output", type=Path, help="JSON result file (default: benchmarks/results/http_overhead-<UTC time>.json)")
    options = parser.parse_args(argv)

    if not 1 <= options.rounds <= 50:
        parser.error(f"--rounds must be between 1 and 50, got {options.rounds}")
    if not 1 <= options.duration <= 600:
        parser.error(f"--duration must be between 1 and 600 seconds, got {options.duration:g}")
    if not 1 <= options.warmup <= 120:
        parser.error(f"--warmup must be between 1 and 120 seconds, got {options.warmup:g}")
    if options.gc_freeze_after is not None and not options.gc_stats:
        parser.error("--gc-freeze-after needs --gc-stats")
    unknown = [name for name in options.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    return options


@contextlib.contextmanager
def log_directory(keep: bool, stamp: str) -> Iterator[Path]:
    if keep:
        path = RESULTS_DIR / f"logs-{stamp}"
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="dtc-otel-bench-") as temporary:
        yield Path(temporary)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    variants = [VARIANTS[name] for name in options.variants.split(",")]
    check_tools(variants)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    output = options.output or RESULTS_DIR / f"http_overhead-{stamp}.json"
    registry = ProcessRegistry()
    runs: list[dict[str, Any]] = []
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    started = time.monotonic()

    try:
        with log_directory(options.keep_logs, stamp) as log_dir, tempfile.TemporaryDirectory(prefix="dtc-otel-src-") as snapshot:
            options.source_root = snapshot_sources(options.source_rev, Path(snapshot)) if options.source_rev else None
            probe_env = variant_env(VARIANTS["dtc-otel"], None, None, None, options.source_root)
            dtc_otel_file = imported_dtc_otel_file(probe_env)
            if options.source_root is not None and not dtc_otel_file.startswith(str(options.source_root)):
                sys.exit(f"the servers would import dtc_otel from {dtc_otel_file}, not from the snapshot of {options.source_rev}")
            print(f"dtc_otel imported from {dtc_otel_file}", file=sys.stderr, flush=True)
            fingerprint = source_fingerprint(options.source_root, options.source_rev)
            fingerprint["imported_from"] = dtc_otel_file

            for round_index in range(options.rounds):
                # Rotate the order so no variant always runs first or last.
                shift = round_index % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    print(f"round {round_index + 1}/{options.rounds}: {variant.name} ...", file=sys.stderr, flush=True)
                    run = run_variant(registry, variant, options, log_dir, round_index + 1)
                    runs.append(run)
                    print(
                        f"  {run['rps']:.0f} req/s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, "
                        f"server CPU {run['server_cpu_us_per_request']:.0f} us/request",
                        file=sys.stderr,
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("interrupted; stopping the processes started by this run", file=sys.stderr)
        return 130
    finally:
        registry.stop_all()

    summary = summarize(runs, [variant.name for variant in variants])
    report = {
        "started_utc": stamp,
        "wall_time_s": time.monotonic() - started,
        "options": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(options).items() if key != "source_root"
        },
        "commands": {variant.name: {"env": variant.env, "args": server_args(variant, 0, options.access_log, options.gc_stats)} for variant in variants},
        "machine": machine_info(),
        "dtc_otel_source": fingerprint,
        "summary": summary,
        "runs": runs,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")

    print(markdown_table(summary))
    table = gc_table(summary)
    if table:
        print("Garbage collections (medians of the rounds; gen 0 to 2 counts cover the server's whole life):\n")
        print(table)
    for line in export_check_lines(runs):
        print(line)
    print()
    for line in goal_lines(summary):
        print(line)
    hashes = {run["dtc_otel_sources_sha256"] for run in runs}
    if len(hashes) > 1:
        print(f"\nWARNING: the dtc_otel sources changed during the run ({len(hashes)} versions); rerun with --source-rev HEAD")
    print(f"\nraw results: {output}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
