"""Settings read from ``DTC_OTEL_*`` and the standard ``OTEL_*`` environment variables.

This is the one place that reads the environment. Every value is checked when
:func:`load_settings` runs, so a typo fails before the app starts, with a
message that names the variable, the value and the accepted form.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["ConfigError", "Settings", "load_settings"]


class ConfigError(ValueError):
    """An environment variable has a value that dtc-otel cannot use."""


# Documented in the README's configuration table; keep both in step.
DTC_OTEL_DISABLED = "DTC_OTEL_DISABLED"
DTC_OTEL_LOG_FORMAT = "DTC_OTEL_LOG_FORMAT"
DTC_OTEL_LOG_LEVEL = "DTC_OTEL_LOG_LEVEL"
DTC_OTEL_CONFIGURE_LOGGING = "DTC_OTEL_CONFIGURE_LOGGING"
DTC_OTEL_SHUTDOWN_TIMEOUT = "DTC_OTEL_SHUTDOWN_TIMEOUT"
DTC_OTEL_EXPORT_WARNING_INTERVAL = "DTC_OTEL_EXPORT_WARNING_INTERVAL"
DTC_OTEL_DATABASE_URL = "DTC_OTEL_DATABASE_URL"
DTC_OTEL_CAPTURE_SQL_PARAMETERS = "DTC_OTEL_CAPTURE_SQL_PARAMETERS"
DTC_OTEL_SQLCOMMENTER = "DTC_OTEL_SQLCOMMENTER"
DTC_OTEL_REQUEST_ID_HEADERS = "DTC_OTEL_REQUEST_ID_HEADERS"
DTC_OTEL_RESPONSE_ID_HEADER = "DTC_OTEL_RESPONSE_ID_HEADER"
DTC_OTEL_OUTBOUND_ID_HEADER = "DTC_OTEL_OUTBOUND_ID_HEADER"
DTC_OTEL_UNTRUSTED_PATHS = "DTC_OTEL_UNTRUSTED_PATHS"
DTC_OTEL_PROPAGATE_HOSTS = "DTC_OTEL_PROPAGATE_HOSTS"
DTC_OTEL_NO_PROPAGATE_HOSTS = "DTC_OTEL_NO_PROPAGATE_HOSTS"
DTC_OTEL_PARTNER_REQUEST_ID_HEADERS = "DTC_OTEL_PARTNER_REQUEST_ID_HEADERS"
DTC_OTEL_PARTNERS = "DTC_OTEL_PARTNERS"
DTC_OTEL_BAGGAGE_KEYS = "DTC_OTEL_BAGGAGE_KEYS"
DTC_OTEL_LOG_VALUE_MAX_BYTES = "DTC_OTEL_LOG_VALUE_MAX_BYTES"
DTC_OTEL_REDACT_PATTERNS = "DTC_OTEL_REDACT_PATTERNS"
DTC_OTEL_GC_FREEZE = "DTC_OTEL_GC_FREEZE"
DTC_OTEL_AUDIT = "DTC_OTEL_AUDIT"
DTC_OTEL_AUDIT_SCHEMA = "DTC_OTEL_AUDIT_SCHEMA"
DTC_OTEL_AUDIT_SPOOL_DIR = "DTC_OTEL_AUDIT_SPOOL_DIR"
DTC_OTEL_AUDIT_CONNECTIONS = "DTC_OTEL_AUDIT_CONNECTIONS"

_DEFAULT_SHUTDOWN_TIMEOUT = 5.0
_DEFAULT_EXPORT_WARNING_INTERVAL = 60.0
_DEFAULT_REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id")
# Response headers in which common vendors return their own request ID.
_DEFAULT_PARTNER_REQUEST_ID_HEADERS = (
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-ms-request-id",
    "x-github-request-id",
    "cf-ray",
    "x-correlation-id",
    "x-trace-id",
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOST_PATTERN = re.compile(r"^[A-Za-z0-9*?.:\[\]-]+$")
_ENTITY_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_LOG_FORMATS = ("auto", "json", "console")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("http/protobuf", "grpc")
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
# A W3C Baggage-style list, which is what OTEL_RESOURCE_ATTRIBUTES and the
# OTLP header variables use: "key=value,key2=value2".
_KEY_VALUE_ITEM = re.compile(r"^\s*[^=\s,][^=,]*=[^,]*$")


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process.

    Fields mirror the environment variables in the README's table; ``None``
    means the variable was not set and the OpenTelemetry SDK default applies.
    """

    disabled: bool = False
    log_format: str = "auto"
    log_level: str = "INFO"
    configure_logging: bool = True
    shutdown_timeout: float = _DEFAULT_SHUTDOWN_TIMEOUT
    export_warning_interval: float = _DEFAULT_EXPORT_WARNING_INTERVAL
    database_url: str | None = None
    capture_sql_parameters: bool = False
    sqlcommenter: bool = False
    service_name: str | None = None
    traces_exporters: tuple[str, ...] = ("otlp",)
    otlp_protocol: str = "http/protobuf"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    request_id_headers: tuple[str, ...] = _DEFAULT_REQUEST_ID_HEADERS
    response_id_header: str | None = "x-request-id"
    outbound_id_header: str | None = "x-request-id"
    untrusted_paths: tuple[str, ...] = ()
    propagate_hosts: tuple[str, ...] = ()
    no_propagate_hosts: tuple[str, ...] = ()
    partner_request_id_headers: tuple[str, ...] = _DEFAULT_PARTNER_REQUEST_ID_HEADERS
    partners: tuple[tuple[str, str], ...] = ()
    baggage_keys: frozenset[str] = frozenset()
    log_value_max_bytes: int = 2048
    gc_freeze: bool = True
    audit: bool = True
    audit_schema: str = "dtc_audit"
    audit_spool_dir: str | None = None
    audit_connections: int = 2

    def __repr__(self) -> str:
        # The database URL may carry a password; never print it.
        url = _mask_url_password(self.database_url) if self.database_url else None

        return (
            f"Settings(disabled={self.disabled}, service_name={self.service_name!r}, "
            f"traces_exporters={self.traces_exporters!r}, otlp_protocol={self.otlp_protocol!r}, "
            f"log_format={self.log_format!r}, log_level={self.log_level!r}, "
            f"shutdown_timeout={self.shutdown_timeout}, database_url={url!r})"
        )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting from *environ* (default: ``os.environ``).

    Raises:
        ConfigError: a variable is set to a value outside its accepted form.
    """
    env = os.environ if environ is None else environ

    _check_sampler(env)
    _check_otlp_endpoint(env)
    _check_batch_settings(env)
    _check_redaction(env)
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        _parse_key_values(env, name)

    resource_attributes = _parse_key_values(env, "OTEL_RESOURCE_ATTRIBUTES")
    service_name = env.get("OTEL_SERVICE_NAME", "").strip() or resource_attributes.get("service.name")

    return Settings(
        disabled=_bool(env, DTC_OTEL_DISABLED, False) or _bool(env, "OTEL_SDK_DISABLED", False),
        log_format=_choice(env, DTC_OTEL_LOG_FORMAT, "auto", _LOG_FORMATS, lower=True),
        log_level=_choice(env, DTC_OTEL_LOG_LEVEL, "INFO", _LOG_LEVELS, lower=False),
        configure_logging=_bool(env, DTC_OTEL_CONFIGURE_LOGGING, True),
        shutdown_timeout=_seconds(env, DTC_OTEL_SHUTDOWN_TIMEOUT, _DEFAULT_SHUTDOWN_TIMEOUT),
        export_warning_interval=_seconds(
            env, DTC_OTEL_EXPORT_WARNING_INTERVAL, _DEFAULT_EXPORT_WARNING_INTERVAL
        ),
        database_url=_database_url(env),
        capture_sql_parameters=_bool(env, DTC_OTEL_CAPTURE_SQL_PARAMETERS, False),
        sqlcommenter=_bool(env, DTC_OTEL_SQLCOMMENTER, False),
        service_name=service_name or None,
        traces_exporters=_exporters(env),
        otlp_protocol=_protocol(env),
        resource_attributes=resource_attributes,
        request_id_headers=_header_list(env, DTC_OTEL_REQUEST_ID_HEADERS, _DEFAULT_REQUEST_ID_HEADERS),
        response_id_header=_optional_header(env, DTC_OTEL_RESPONSE_ID_HEADER, "x-request-id"),
        outbound_id_header=_optional_header(env, DTC_OTEL_OUTBOUND_ID_HEADER, "x-request-id"),
        untrusted_paths=_paths(env),
        propagate_hosts=_hosts(env, DTC_OTEL_PROPAGATE_HOSTS),
        no_propagate_hosts=_hosts(env, DTC_OTEL_NO_PROPAGATE_HOSTS),
        partner_request_id_headers=_header_list(
            env, DTC_OTEL_PARTNER_REQUEST_ID_HEADERS, _DEFAULT_PARTNER_REQUEST_ID_HEADERS
        ),
        partners=_partners(env),
        baggage_keys=_entity_keys(env),
        log_value_max_bytes=_positive_int(env, DTC_OTEL_LOG_VALUE_MAX_BYTES, 2048, "of bytes, such as 2048"),
        gc_freeze=_bool(env, DTC_OTEL_GC_FREEZE, True),
        audit=_bool(env, DTC_OTEL_AUDIT, True),
        audit_schema=_schema_name(env),
        audit_spool_dir=(env.get(DTC_OTEL_AUDIT_SPOOL_DIR) or "").strip() or None,
        audit_connections=_positive_int(env, DTC_OTEL_AUDIT_CONNECTIONS, 2, "of connections from 1 to 16, such as 2", 16),
    )


def _invalid(name: str, value: str, accepted: str) -> ConfigError:
    return ConfigError(f"invalid {name}={value!r}: expected {accepted}")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default

    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False if value else default

    raise _invalid(name, raw, "one of true, false, 1, 0, yes, no, on, off")


def _choice(
    env: Mapping[str, str], name: str, default: str, accepted: tuple[str, ...], *, lower: bool
) -> str:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default

    value = raw.strip().lower() if lower else raw.strip().upper()
    if value not in accepted:
        raise _invalid(name, raw, "one of " + ", ".join(accepted))

    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default

    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise _invalid(name, raw, "a positive number of seconds, such as 5 or 0.5")

    return value


def _exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        return ("otlp",)

    names = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    unknown = [name for name in names if name not in _EXPORTERS]
    if unknown or not names:
        raise _invalid(
            "OTEL_TRACES_EXPORTER", raw, "a comma-separated list of " + ", ".join(_EXPORTERS)
        )
    if "none" in names and len(names) > 1:
        raise _invalid("OTEL_TRACES_EXPORTER", raw, "'none' alone, or a list without 'none'")

    return () if names == ("none",) else names


def _protocol(env: Mapping[str, str]) -> str:
    # The per-signal variable wins over the general one, as the OpenTelemetry specification requires.
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue

        value = raw.strip().lower()
        if value not in _PROTOCOLS:
            raise _invalid(name, raw, "http/protobuf or grpc")

        return value

    return "http/protobuf"


def _check_sampler(env: Mapping[str, str]) -> None:
    raw = env.get("OTEL_TRACES_SAMPLER")
    sampler = (raw or "").strip().lower()
    if sampler and sampler not in _SAMPLERS:
        raise _invalid("OTEL_TRACES_SAMPLER", raw or "", "one of " + ", ".join(_SAMPLERS))

    arg = env.get("OTEL_TRACES_SAMPLER_ARG")
    if arg is None or not arg.strip() or not sampler.endswith("traceidratio"):
        return

    try:
        ratio = float(arg)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:
        raise _invalid("OTEL_TRACES_SAMPLER_ARG", arg, "a ratio between 0.0 and 1.0, such as 0.25")


_BATCH_SETTINGS = (
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
)


def _check_batch_settings(env: Mapping[str, str]) -> None:
    # The SDK raises on zero or negative values while the app starts, which
    # would leave the app running uninstrumented, so they are checked here.
    for name in _BATCH_SETTINGS:
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        if not raw.strip().isdigit() or int(raw) <= 0:
            raise _invalid(name, raw, "a positive whole number (milliseconds for delays and timeouts)")

    queue = env.get("OTEL_BSP_MAX_QUEUE_SIZE", "").strip()
    batch = env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "").strip()
    if queue.isdigit() and batch.isdigit() and int(batch) > int(queue):
        raise _invalid(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", batch, f"a number no larger than OTEL_BSP_MAX_QUEUE_SIZE ({queue})"
        )


def _check_otlp_endpoint(env: Mapping[str, str]) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue

        parts = urlsplit(raw.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid(name, raw, "an http:// or https:// URL, such as http://127.0.0.1:4318")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError as exc:
            raise _invalid(name, raw, "a URL whose port is a number from 1 to 65535") from exc


def _parse_key_values(env: Mapping[str, str], name: str) -> dict[str, str]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return {}

    result: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        if not _KEY_VALUE_ITEM.match(item):
            # The item may hold a header secret, so the message names the
            # position of the bad item rather than echoing it for headers.
            shown = raw if name == "OTEL_RESOURCE_ATTRIBUTES" else "<hidden>"
            raise _invalid(name, shown, "comma-separated key=value pairs, such as a=1,b=2")
        key, _, value = item.partition("=")
        result[unquote(key.strip())] = unquote(value.strip())

    return result


def _database_url(env: Mapping[str, str]) -> str | None:
    raw = env.get(DTC_OTEL_DATABASE_URL)
    if raw is None or not raw.strip():
        return None

    parts = urlsplit(raw.strip())
    if parts.scheme not in ("postgresql", "postgres"):
        raise _invalid(
            DTC_OTEL_DATABASE_URL,
            _mask_url_password(raw),
            "a postgresql:// URL, such as postgresql://user@127.0.0.1:5432/app",
        )

    return raw.strip()


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url

    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)

    return parts._replace(netloc=netloc).geturl()


def _items(env: Mapping[str, str], name: str) -> list[str] | None:
    raw = env.get(name)
    if raw is None:
        return None

    return [item.strip() for item in raw.split(",") if item.strip()]


def _header_list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    items = _items(env, name)
    if items is None:
        return default

    for item in items:
        if not _HEADER_NAME.match(item):
            raise _invalid(name, env[name], "comma-separated HTTP header names, such as x-request-id,request-id")

    return tuple(item.lower() for item in items)


def _optional_header(env: Mapping[str, str], name: str, default: str) -> str | None:
    raw = env.get(name)
    if raw is None:
        return default
    if not raw.strip():
        # Set but empty: the header is turned off.
        return None
    if not _HEADER_NAME.match(raw.strip()):
        raise _invalid(name, raw, "one HTTP header name, such as X-Request-ID, or empty to turn it off")

    return raw.strip().lower()


def _paths(env: Mapping[str, str]) -> tuple[str, ...]:
    items = _items(env, DTC_OTEL_UNTRUSTED_PATHS) or []
    for item in items:
        if item != "*" and not item.startswith("/"):
            raise _invalid(
                DTC_OTEL_UNTRUSTED_PATHS, env[DTC_OTEL_UNTRUSTED_PATHS], "'*' or path prefixes starting with '/', such as /public,/webhooks"
            )

    return tuple(items)


def _hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    items = _items(env, name) or []
    for item in items:
        if not _HOST_PATTERN.match(item):
            raise _invalid(name, env[name], "comma-separated host names or patterns, such as api.example.com,*.partner.io")

    return tuple(item.lower() for item in items)


def _partners(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    items = _items(env, DTC_OTEL_PARTNERS) or []
    partners = []
    for item in items:
        partner, _, pattern = item.partition("=")
        if not partner.strip() or not pattern.strip() or not _HOST_PATTERN.match(pattern.strip()):
            raise _invalid(
                DTC_OTEL_PARTNERS, env[DTC_OTEL_PARTNERS], "comma-separated name=host-pattern pairs, such as halo=*.halopsa.com"
            )
        partners.append((partner.strip(), pattern.strip().lower()))

    return tuple(partners)


def _entity_keys(env: Mapping[str, str]) -> frozenset[str]:
    items = _items(env, DTC_OTEL_BAGGAGE_KEYS) or []
    for item in items:
        if not _ENTITY_KEY.match(item):
            raise _invalid(DTC_OTEL_BAGGAGE_KEYS, env[DTC_OTEL_BAGGAGE_KEYS], "comma-separated entity keys, such as customer_id,quote_id")

    return frozenset(items)


_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _schema_name(env: Mapping[str, str]) -> str:
    raw = env.get(DTC_OTEL_AUDIT_SCHEMA)
    if raw is None or not raw.strip():
        return "dtc_audit"
    if not _SCHEMA_NAME.match(raw.strip()):
        raise _invalid(DTC_OTEL_AUDIT_SCHEMA, raw, "a lowercase SQL identifier of at most 63 characters, such as dtc_audit")

    return raw.strip()


def _positive_int(env: Mapping[str, str], name: str, default: int, unit: str, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip()
    if not value.isdigit() or int(value) <= 0 or (maximum is not None and int(value) > maximum):
        raise _invalid(name, raw, f"a positive whole number {unit}")

    return int(value)


def _check_redaction(env: Mapping[str, str]) -> None:
    raw = env.get(DTC_OTEL_REDACT_PATTERNS)
    if raw:
        for line in raw.split("\n"):
            if not line.strip():
                continue
            try:
                re.compile(line)
            except re.error as exc:
                raise _invalid(
                    DTC_OTEL_REDACT_PATTERNS, line, f"Python regular expressions, one per line ({exc})"
                ) from exc
    for name in ("DTC_OTEL_REDACT_EMAILS", "DTC_OTEL_REDACT_PHONES"):
        _bool(env, name, False)
