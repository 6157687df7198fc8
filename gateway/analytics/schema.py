"""Versioned SQL migrations (migrations/NNNN_name.sql), applied once each and recorded."""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import resources

import asyncpg
import msgspec

log = logging.getLogger(__name__)

# Held for the whole run, so gateways starting together apply each migration once.
_MIGRATION_LOCK = 0x67617465776179  # "gateway"
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

_CREATE_TRACKING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class Migration(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    folder = resources.files("gateway.analytics") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(version=int(match[1]), name=match[2], sql=entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def _key(migration: Migration) -> tuple[int, str]:
    return migration.version, migration.name


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; return their names."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(_CREATE_TRACKING)
        done = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT * FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning("migration %04d_%s was edited after it was applied", *_key(migration))
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum,
                )
            applied.append(f"{migration.version:04d}_{migration.name}")
            log.info("applied migration %04d_%s", migration.version, migration.name)
        await ensure_partitions(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def ensure_partitions(conn: asyncpg.Connection, months_ahead: int = 1) -> int:
    """Create this month's and the next months' log partitions if missing; return how many."""
    created: int = await conn.fetchval("SELECT ensure_intent_log_partitions($1)", months_ahead)
    if created:
        log.info("created %d log partition(s)", created)
    return created
