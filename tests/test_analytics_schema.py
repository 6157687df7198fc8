"""Migrations and partitions on a real PostgreSQL: idempotent, tracked, months created ahead."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

import asyncpg

from gateway.analytics.schema import ensure_partitions, load_migrations, migrate


def _month_name(months_from_now: int) -> str:
    now = datetime.now(UTC)
    year, month = divmod(now.month - 1 + months_from_now, 12)
    return f"intent_classification_logs_{now.year + year:04d}_{month + 1:02d}"


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_migrate_applies_each_migration_once(postgres_db: str) -> None:
    """A second run applies nothing and leaves one schema_migrations row per file."""
    conn = await asyncpg.connect(postgres_db)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        versions = [r["version"] for r in rows]
    finally:
        await conn.close()
    assert len(first) == len(load_migrations()) >= 3
    assert second == []
    assert versions == [m.version for m in load_migrations()]


async def test_concurrent_migrations_do_not_collide(postgres_db: str) -> None:
    """Two gateways starting together: the advisory lock lets one apply, the other sees it done."""
    conns = [await asyncpg.connect(postgres_db) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(len(r) for r in results) == [0, len(load_migrations())]


async def test_this_and_next_months_partitions_exist(postgres_db: str) -> None:
    """Partitions come from the clock, not from a hard-coded list."""
    conn = await asyncpg.connect(postgres_db)
    try:
        await migrate(conn)
        tables = await _tables(conn)
    finally:
        await conn.close()
    assert {_month_name(0), _month_name(1), "intent_classification_logs_default"} <= tables


async def test_rows_in_the_default_partition_move_to_a_new_month(postgres_db: str) -> None:
    """A row for a month with no partition lands in the default one, then moves when it is created."""
    conn = await asyncpg.connect(postgres_db)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO intent_classification_logs (request_id, user_id, classified_workflow, confidence,"
            " processing_time_ms, trace_id, created_at)"
            " VALUES (gen_random_uuid(), 'u', 'image_generation', 0.9, 3, 't',"
            " date_trunc('month', now()) + interval '3 months 2 days')"
        )
        assert await conn.fetchval("SELECT count(*) FROM intent_classification_logs_default") == 1
        created = await ensure_partitions(conn, months_ahead=3)
        in_default = await conn.fetchval("SELECT count(*) FROM intent_classification_logs_default")
        in_month = await conn.fetchval(f"SELECT count(*) FROM {_month_name(3)}")
        total = await conn.fetchval("SELECT count(*) FROM intent_classification_logs")
    finally:
        await conn.close()
    assert created == 2 and in_default == 0 and in_month == 1 and total == 1


async def test_migrate_command(postgres_db: str) -> None:
    """`python -m gateway migrate` applies the schema, then says it is up to date."""
    env = {**os.environ, "DATABASE_URL": postgres_db}
    outputs = []
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "migrate", env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        outputs.append(out.decode())
    assert "applied 0001_request_logs" in outputs[0]
    assert outputs[1] == "schema is up to date\n"
