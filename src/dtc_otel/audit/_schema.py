"""Migrations: numbered SQL files applied once each, safely from several processes at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from opentelemetry.instrumentation.utils import suppress_instrumentation
from psycopg import sql

__all__ = ["Migration", "apply_migrations", "load_migrations", "render_migrations"]

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any 64-bit number works; this one is only dtc-otel's, so migrations of two
# processes queue up on it and never interleave.
_LOCK_ID = 0x6474635F6D6967


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str

    def render(self, schema: str) -> str:
        """Return the SQL with ``{schema}`` replaced by the quoted schema name."""
        quoted = sql.Identifier(schema).as_string()

        return self.template.replace("{schema}", quoted)


def _migration_dir() -> Path:
    # Wheels ship the files inside the package; an editable install reads
    # them from the repository's migrations/ folder.
    packaged = resources.files("dtc_otel") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))

    return Path(__file__).resolve().parents[3] / "migrations"


def load_migrations() -> list[Migration]:
    """Return the migrations in version order."""
    folder = _migration_dir()
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"invalid migration file name {path.name!r}: expected NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))

    return migrations


def render_migrations(schema: str, *, record: bool = False) -> str:
    """Return every migration's SQL for *schema*, for teams with their own migration tool.

    With *record*, the output also creates ``schema_migrations`` and records
    each version, so ``dtc-otel migrate`` and ``doctor`` see them as applied.
    """
    quoted = sql.Identifier(schema).as_string()
    parts = []
    if record:
        parts.append(
            f"CREATE SCHEMA IF NOT EXISTS {quoted};\n"
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
        )
    for m in load_migrations():
        parts.append(f"-- {m.version:04d}_{m.name}\n{m.render(schema)}")
        if record:
            parts.append(
                f"INSERT INTO {quoted}.schema_migrations (version, name) VALUES ({m.version}, '{m.name}') "
                "ON CONFLICT (version) DO NOTHING;"
            )

    return "\n".join(parts)


def apply_migrations(database_url: str, schema: str) -> list[str]:
    """Apply the migrations not yet applied to *schema*; return their names.

    Two processes may run this at once: an advisory lock makes the second
    wait, and it then finds nothing left to do.
    """
    applied: list[str] = []
    schema_id = sql.Identifier(schema)
    # dtc-otel's own set-up statements would each become a one-span trace.
    with suppress_instrumentation(), psycopg.connect(database_url) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema_id))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    "version integer PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(schema_id)
            )
            done = {
                row[0]
                for row in conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(schema_id))
            }
            for migration in load_migrations():
                if migration.version in done:
                    continue
                conn.execute(migration.render(schema).encode("utf-8"))
                conn.execute(
                    sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(schema_id),
                    (migration.version, migration.name),
                )
                applied.append(f"{migration.version:04d}_{migration.name}")

    return applied
