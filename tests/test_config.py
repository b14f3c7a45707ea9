"""Settings from OTEL_* and DTC_OTEL_* variables: valid values load, invalid ones fail fast."""

from __future__ import annotations

import subprocess

import pytest

from dtc_otel import ConfigError, load_settings
from dtc_otel._service_name import default_service_name
from tests.conftest import APPS, BIN


def test_defaults_without_environment() -> None:
    """No variables: OTLP over HTTP, JSON/console auto, 5 s shutdown."""
    settings = load_settings({})

    assert settings.traces_exporters == ("otlp",)
    assert settings.otlp_protocol == "http/protobuf"
    assert settings.shutdown_timeout == 5.0
    assert settings.log_format == "auto"
    assert settings.service_name is None
    assert not settings.disabled


def test_exporter_choices_load() -> None:
    """console, none and lists are accepted as OTEL_TRACES_EXPORTER."""
    assert load_settings({"OTEL_TRACES_EXPORTER": "console"}).traces_exporters == ("console",)
    assert load_settings({"OTEL_TRACES_EXPORTER": "none"}).traces_exporters == ()
    assert load_settings({"OTEL_TRACES_EXPORTER": "otlp, console"}).traces_exporters == ("otlp", "console")


def test_signal_protocol_wins_over_general() -> None:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL overrides OTEL_EXPORTER_OTLP_PROTOCOL."""
    settings = load_settings(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    )

    assert settings.otlp_protocol == "http/protobuf"


def test_service_name_from_resource_attributes() -> None:
    """service.name in OTEL_RESOURCE_ATTRIBUTES counts as a set service name."""
    settings = load_settings({"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing,deployment.environment=prod"})

    assert settings.service_name == "billing"
    assert settings.resource_attributes["deployment.environment"] == "prod"


INVALID = [
    ("OTEL_TRACES_EXPORTER", "jaeger", "otlp, console, none"),
    ("OTEL_TRACES_EXPORTER", "none,otlp", "'none' alone"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf or grpc"),
    ("OTEL_TRACES_SAMPLER", "sometimes", "parentbased_traceidratio"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "http:// or https://"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999", "port"),
    ("OTEL_RESOURCE_ATTRIBUTES", "team", "key=value"),
    ("DTC_OTEL_SHUTDOWN_TIMEOUT", "-1", "positive number of seconds"),
    ("DTC_OTEL_SHUTDOWN_TIMEOUT", "soon", "positive number of seconds"),
    ("DTC_OTEL_LOG_FORMAT", "xml", "auto, json, console"),
    ("DTC_OTEL_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ("DTC_OTEL_DISABLED", "maybe", "true, false"),
    ("DTC_OTEL_DATABASE_URL", "mysql://db/app", "postgresql://"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "-1", "positive whole number"),
    ("OTEL_BSP_SCHEDULE_DELAY", "soon", "positive whole number"),
    ("DTC_OTEL_UNTRUSTED_PATHS", "public", "path prefixes starting with '/'"),
    ("DTC_OTEL_PARTNERS", "halo", "name=host-pattern"),
    ("DTC_OTEL_REQUEST_ID_HEADERS", "x request id", "HTTP header names"),
    ("DTC_OTEL_BAGGAGE_KEYS", "quote-id", "entity keys"),
    ("DTC_OTEL_REDACT_PATTERNS", "(unclosed", "Python regular expressions"),
    ("DTC_OTEL_LOG_VALUE_MAX_BYTES", "big", "positive whole number of bytes"),
    ("DTC_OTEL_AUDIT_SCHEMA", "Bad-Name", "lowercase SQL identifier"),
    ("DTC_OTEL_AUDIT_CONNECTIONS", "17", "connections from 1 to 16"),
    ("DTC_OTEL_AUDIT_CONNECTIONS", "0", "connections from 1 to 16"),
]


@pytest.mark.parametrize(("name", "value", "accepted"), INVALID)
def test_invalid_value_names_variable_value_and_form(name: str, value: str, accepted: str) -> None:
    """The error names the variable, the value and the accepted form."""
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value})

    message = str(caught.value)
    assert name in message
    assert repr(value) in message
    assert accepted in message


def test_sampler_ratio_out_of_range() -> None:
    """A ratio sampler argument outside 0..1 is rejected."""
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG='1.5'"):
        load_settings({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"})


def test_header_error_hides_value() -> None:
    """An invalid OTLP header list is reported without echoing a possible secret."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"OTEL_EXPORTER_OTLP_HEADERS": "Bearer s3cr3t-token"})

    assert "s3cr3t" not in str(caught.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(caught.value)


def test_database_url_password_masked() -> None:
    """The settings repr and the error for a database URL never show its password."""
    settings = load_settings({"DTC_OTEL_DATABASE_URL": "postgresql://app:hunter2@127.0.0.1/app"})
    assert "hunter2" not in repr(settings)

    with pytest.raises(ConfigError) as caught:
        load_settings({"DTC_OTEL_DATABASE_URL": "mysql://app:hunter2@127.0.0.1/app"})
    assert "hunter2" not in str(caught.value)


def test_wrapper_fails_fast_on_invalid_value() -> None:
    """dtc-otel-run exits 2 before starting the program and names the fix."""
    result = subprocess.run(
        [str(BIN / "dtc-otel-run"), "python", "-c", "print('started')"],
        env={"PATH": str(BIN), "OTEL_TRACES_EXPORTER": "zipkin"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=APPS,
    )

    assert result.returncode == 2
    assert "started" not in result.stdout
    assert "OTEL_TRACES_EXPORTER='zipkin'" in result.stderr
    assert "otlp, console, none" in result.stderr


def test_wrapper_rejects_grpc_without_package() -> None:
    """grpc without its exporter package fails before the app starts, naming the package."""
    result = subprocess.run(
        [str(BIN / "dtc-otel-run"), "python", "-c", "print('started')"],
        env={"PATH": str(BIN), "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "started" not in result.stdout
    assert "opentelemetry-exporter-otlp-proto-grpc" in result.stderr


def test_wrapper_reports_unknown_command() -> None:
    """A command that is not on PATH gets a clear error, not a traceback."""
    result = subprocess.run(
        [str(BIN / "dtc-otel-run"), "no-such-program-here"],
        env={"PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 127
    assert "command not found: 'no-such-program-here'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["uvicorn", "billing.api:app", "--port", "8000"], "billing"),
        (["uvicorn", "app:app"], "project"),
        (["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "orders.main:create_app()"], "orders"),
        (["python", "examples/portal/app.py", "--demo"], "portal"),
        (["python3.11", "worker.py"], "worker"),
        (["python", "-u", "-m", "invoices.worker"], "worker"),
        (["celery"], "celery"),
        (["uvicorn", "app:app", "--app-dir", "examples/portal"], "portal"),
        (["gunicorn", "--chdir=services/billing", "app:app"], "billing"),
    ],
)
def test_default_service_name_from_command(argv: list[str], expected: str) -> None:
    """A generic module or file name falls back to its folder."""
    assert default_service_name(argv, cwd="/srv/project") == expected


def test_audit_connections_setting() -> None:
    """DTC_OTEL_AUDIT_CONNECTIONS sets the writer's connection count, and unset means two."""
    assert load_settings({}).audit_connections == 2
    assert load_settings({"DTC_OTEL_AUDIT_CONNECTIONS": " 1 "}).audit_connections == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "off until DTC_OTEL_DATABASE_URL is set"),
        ({"DTC_OTEL_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/portal"}, "on,"),
        ({"DTC_OTEL_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/portal", "DTC_OTEL_AUDIT": "false"}, "off (DTC_OTEL_AUDIT=false)"),
    ],
)
def test_config_shows_audit_state(env: dict[str, str], expected: str) -> None:
    """dtc-otel config prints whether the audit trail is on, and what it waits for when it is not."""
    import os

    result = subprocess.run(
        [str(BIN / "dtc-otel"), "config"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("audit trail"))

    assert expected in line
