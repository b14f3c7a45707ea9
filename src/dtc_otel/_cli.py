"""Command-line entry points: ``dtc-otel-run`` and ``dtc-otel``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence

from dtc_otel._cli_audit import add_audit_commands
from dtc_otel._cli_live import add_live_commands
from dtc_otel._config import ConfigError, Settings, load_settings
from dtc_otel._export import build_exporters
from dtc_otel._service_name import default_service_name
from dtc_otel._version import __version__

__all__ = ["main", "run"]

_RUN_USAGE = """\
usage: dtc-otel-run COMMAND [ARGS...]

Run COMMAND with OpenTelemetry tracing and trace-correlated logs, without
changing its code. Examples:

  dtc-otel-run python app.py
  dtc-otel-run uvicorn app:app --workers 2
  dtc-otel-run gunicorn -k uvicorn.workers.UvicornWorker -w 2 --preload app:app

Configuration comes from OTEL_* and DTC_OTEL_* environment variables; see the
README's configuration table. Check it with: dtc-otel config
"""


def run(argv: Sequence[str] | None = None) -> None:
    """Start COMMAND under OpenTelemetry's auto-instrumentation bootstrap with dtc-otel's distro."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_RUN_USAGE, end="")
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"dtc-otel-run {__version__}")
        sys.exit(0)

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"dtc-otel-run: {exc}", file=sys.stderr)
        sys.exit(2)

    try:
        build_exporters(settings)
    except ConfigError as exc:
        print(f"dtc-otel-run: {exc}", file=sys.stderr)
        sys.exit(2)

    if shutil.which(args[0]) is None:
        print(f"dtc-otel-run: command not found: {args[0]!r}; check the name and your PATH", file=sys.stderr)
        sys.exit(127)

    # Computed once here so that every worker process, however the server
    # starts it, reports the same name.
    if not settings.service_name:
        os.environ["OTEL_SERVICE_NAME"] = default_service_name(args)
    # Select dtc-otel's entry points even when other distros are installed.
    os.environ["OTEL_PYTHON_DISTRO"] = "dtc_otel"
    os.environ["OTEL_PYTHON_CONFIGURATOR"] = "dtc_otel"

    from opentelemetry.instrumentation.auto_instrumentation import run as bootstrap_run

    # The bootstrap reads its own options only before COMMAND, so every
    # argument after it reaches the program unchanged.
    sys.argv = ["dtc-otel-run", *args]
    bootstrap_run()


def _audit_state(settings: Settings) -> str:
    detail = f"schema {settings.audit_schema}, writer connections {settings.audit_connections}"
    if not settings.audit:
        return f"off (DTC_OTEL_AUDIT=false), {detail}"
    if not settings.database_url:
        return f"off until DTC_OTEL_DATABASE_URL is set, {detail}"

    return f"on, {detail}"


def _cmd_config(_: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"dtc-otel: {exc}", file=sys.stderr)
        return 2

    environ = os.environ
    endpoint = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or ("http://localhost:4318" if settings.otlp_protocol == "http/protobuf" else "http://localhost:4317")
    )
    rows = [
        ("service.name", settings.service_name or "derived from the command by dtc-otel-run"),
        ("disabled", settings.disabled),
        ("traces exporters", ", ".join(settings.traces_exporters) or "none"),
        ("OTLP protocol", settings.otlp_protocol),
        ("OTLP endpoint", endpoint),
        ("OTLP headers", "set (values hidden)" if environ.get("OTEL_EXPORTER_OTLP_HEADERS") else "none"),
        ("sampler", environ.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on (SDK default)"),
        ("resource attributes", ", ".join(f"{k}={v}" for k, v in settings.resource_attributes.items()) or "none"),
        ("disabled instrumentations", environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS") or "none"),
        ("log format / level", f"{settings.log_format} / {settings.log_level}"),
        ("configure logging", settings.configure_logging),
        ("shutdown timeout", f"{settings.shutdown_timeout} s"),
        ("export warning interval", f"{settings.export_warning_interval} s"),
        ("SQL parameters captured", settings.capture_sql_parameters),
        ("sqlcommenter", settings.sqlcommenter),
        ("inbound request-ID headers", ", ".join(settings.request_id_headers)),
        ("response correlation header", settings.response_id_header or "off"),
        ("outbound correlation header", settings.outbound_id_header or "off"),
        ("untrusted paths", ", ".join(settings.untrusted_paths) or "none"),
        ("propagate only to", ", ".join(settings.propagate_hosts) or "all hosts"),
        ("never propagate to", ", ".join(settings.no_propagate_hosts) or "none"),
        ("partners", ", ".join(f"{name}={pattern}" for name, pattern in settings.partners) or "none"),
        ("baggage keys", ", ".join(sorted(settings.baggage_keys)) or "none"),
        ("audit trail", _audit_state(settings)),
        ("database", repr(settings).split("database_url=", 1)[1].rstrip(")")),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    return 0


def _cmd_receive(options: argparse.Namespace) -> int:
    from dtc_otel._receiver import OTLPReceiver, ReceivedSpan

    lock = threading.Lock()

    def show(spans: list[ReceivedSpan]) -> None:
        with lock:
            for span in spans:
                line = {
                    "trace_id": span.trace_id,
                    "span_id": span.span_id,
                    "parent_span_id": span.parent_span_id or None,
                    "name": span.name,
                    "kind": span.kind,
                    "service.name": span.resource.get("service.name"),
                    "service.instance.id": span.resource.get("service.instance.id"),
                }
                if options.attributes:
                    line["attributes"] = span.attributes
                    if span.links:
                        line["links"] = span.links
                print(json.dumps(line, default=str), flush=True)

    try:
        receiver = OTLPReceiver(options.port, host=options.host, on_spans=show, keep=False)
    except OSError as exc:
        print(f"dtc-otel receive: cannot listen on {options.host}:{options.port}: {exc.strerror}", file=sys.stderr)
        return 1

    receiver.start()
    print(f"listening for OTLP/HTTP traces on {receiver.endpoint}/v1/traces", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    receiver.stop()

    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``dtc-otel`` subcommand."""
    parser = argparse.ArgumentParser(prog="dtc-otel", description="dtc-otel tools.")
    parser.add_argument("--version", action="version", version=f"dtc-otel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="check the OTEL_* and DTC_OTEL_* settings and print them")
    config.set_defaults(handler=_cmd_config)

    receive = commands.add_parser(
        "receive", help="print the spans sent to a local OTLP/HTTP endpoint, one JSON line per span"
    )
    receive.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    receive.add_argument("--port", type=int, default=4318, help="TCP port to listen on (default: 4318)")
    receive.add_argument("--attributes", action="store_true", help="also print each span's attributes")
    receive.set_defaults(handler=_cmd_receive)

    add_audit_commands(commands)
    add_live_commands(commands)

    options = parser.parse_args(argv)

    return int(options.handler(options))
