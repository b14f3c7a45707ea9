"""Where the live feed connects: the LISTEN URL, the URL for reads, and the audit schema.

LISTEN needs a session that stays on one server backend. A PgBouncer in
transaction pooling mode hands each transaction to any backend, so a LISTEN
issued through it is lost. ``DTC_OTEL_LISTEN_DATABASE_URL`` therefore points
straight at PostgreSQL, while reads of the event log may still use the
pooled ``DTC_OTEL_DATABASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["DATABASE_URL_ENV", "LISTEN_URL_ENV", "SCHEMA_ENV", "audit_schema", "listen_url", "read_url"]

LISTEN_URL_ENV = "DTC_OTEL_LISTEN_DATABASE_URL"
DATABASE_URL_ENV = "DTC_OTEL_DATABASE_URL"
SCHEMA_ENV = "DTC_OTEL_AUDIT_SCHEMA"


def _checked(name: str, raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None

    url = raw.strip()
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        # The value may carry a password, so only the scheme is quoted.
        raise ValueError(
            f"invalid {name}: expected a postgresql:// URL such as postgresql://app@127.0.0.1:5432/app, "
            f"got a {urlsplit(url).scheme or 'schemeless'} URL"
        )

    return url


def listen_url(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the URL for the LISTEN connection: the LISTEN setting, else the database URL."""
    env = os.environ if environ is None else environ

    return _checked(LISTEN_URL_ENV, env.get(LISTEN_URL_ENV)) or _checked(DATABASE_URL_ENV, env.get(DATABASE_URL_ENV))


def read_url(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the URL for reading ``audit_events``: the database URL, else the LISTEN URL."""
    env = os.environ if environ is None else environ
    from dtc_otel.audit._state import audit_state

    return (
        audit_state.database_url
        or _checked(DATABASE_URL_ENV, env.get(DATABASE_URL_ENV))
        or _checked(LISTEN_URL_ENV, env.get(LISTEN_URL_ENV))
    )


def audit_schema(environ: Mapping[str, str] | None = None) -> str:
    """Return the audit schema: the one the audit trail was configured with, else the setting."""
    env = os.environ if environ is None else environ
    from dtc_otel.audit._state import audit_state

    if audit_state.database_url:
        return audit_state.schema

    return (env.get(SCHEMA_ENV) or "").strip() or audit_state.schema
