"""Postgres in the running gateway: pool, migrations, log writer, view refresh, @tag store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
from aiohttp import web

from gateway.analytics.pool import close_pool, create_pool, database_call, is_unreachable
from gateway.analytics.references import PostgresReferenceStore
from gateway.analytics.schema import ensure_partitions, migrate
from gateway.analytics.views import Analytics
from gateway.analytics.writer import LogWriter, spill_path_problem
from gateway.appkeys import (
    ANALYTICS,
    HEALTH_PROBE_SECONDS,
    HEALTH_PROBES,
    LLM_BREAKER,
    METRICS,
    REFERENCES,
    REQUEST_LOG,
    SETTINGS,
    TRACING,
)
from gateway.config import ConfigError, Settings
from gateway.llm import uses_llm
from observability.metrics import Metrics

log = logging.getLogger(__name__)

PARTITION_CHECK_SECONDS = 3600.0


async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    """With DATABASE_URL: everything Postgres-backed, created here and closed on the way out."""
    settings = app[SETTINGS]
    if not settings.database_url:
        yield
        return
    if problem := spill_path_problem(Path(settings.analytics_spill_path)):
        raise ConfigError(f"ANALYTICS_SPILL_PATH: {problem}; log rows wait there while Postgres is away")
    pool = await create_pool(settings.database_url, init=app[TRACING].instrument_postgres)
    try:
        migrated = settings.database_migrate_on_start and await _try_migrate(pool)
        if settings.log_prompts == "hash" and not settings.log_prompt_hash_key:
            log.warning("LOG_PROMPTS=hash without LOG_PROMPT_HASH_KEY: short prompts can be guessed back")
        writer = LogWriter(
            pool,
            spill_path=Path(settings.analytics_spill_path),
            prompts=settings.log_prompts,
            prompt_hash_key=settings.log_prompt_hash_key.encode() if settings.log_prompt_hash_key else None,
            batch_rows=settings.analytics_batch_rows,
            flush_seconds=settings.analytics_flush_seconds,
            buffer_rows=settings.analytics_buffer_rows,
            breaker_state=_breaker_state(app) if uses_llm(settings) else None,
        )
        analytics = Analytics(pool)
        app[REQUEST_LOG] = writer
        app[ANALYTICS] = analytics
        app[REFERENCES] = PostgresReferenceStore(pool, per_user=settings.max_tags_per_user)
        app[HEALTH_PROBES]["postgres"] = lambda: _probe(pool, writer)
        observe_writer(app[METRICS], writer)
        writer.start()
        upkeep = asyncio.create_task(_upkeep(pool, analytics, settings, migrated=migrated))
        try:
            yield
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            await writer.close()
    finally:
        await close_pool(pool)


def _breaker_state(app: web.Application) -> Callable[[], str]:
    """The LLM breaker's state as this instance last saw it, for circuit_breaker_state."""
    breaker = app[LLM_BREAKER]
    return lambda: breaker.seen_state.value


async def _try_migrate(pool: asyncpg.Pool) -> bool:
    """Migrate now; if the database is unreachable, start anyway and let upkeep retry."""
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    except Exception as exc:
        if not is_unreachable(exc):
            raise  # a broken migration must stop the deploy
        log.warning("database unreachable at start-up, migrations will be retried: %r", exc)
        return False
    return True


async def _upkeep(pool: asyncpg.Pool, analytics: Analytics, settings: Settings, *, migrated: bool) -> None:
    """Periodically: migrate if start-up could not, create partitions ahead, refresh the views."""
    loop = asyncio.get_running_loop()
    partitions_due = loop.time() + PARTITION_CHECK_SECONDS if migrated else 0.0
    again_now = False
    while True:
        retried, again_now = again_now, False
        if not retried:
            await asyncio.sleep(settings.analytics_refresh_seconds)
        try:
            if not migrated and settings.database_migrate_on_start:
                async with pool.acquire() as conn:
                    await migrate(conn)
                migrated = True
            if loop.time() >= partitions_due:
                async with pool.acquire() as conn:
                    await ensure_partitions(conn)
                partitions_due = loop.time() + PARTITION_CHECK_SECONDS
            await analytics.refresh()
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
            # The schema is gone (a database dropped and created again, a restore): migrate
            # again at once (it waited a round, a minute by default), and the log writer's
            # buffered rows follow. Once in a row: migrating skips the versions it has recorded,
            # so a view dropped by hand stays missing, and retrying at once would spin.
            log.warning("analytics schema missing (%r): migrating again", exc)
            again_now = not retried and migrated and settings.database_migrate_on_start
            migrated = False
        except Exception as exc:  # keep refreshing once the database is back
            log.warning("analytics upkeep failed: %r", exc, exc_info=not is_unreachable(exc))


def observe_writer(metrics: Metrics, writer: LogWriter) -> None:
    stats = writer.stats
    metrics.counter(
        "gateway.request_log.rows",
        lambda: [
            (stats.written, {"outcome": "written"}),
            (stats.spilled, {"outcome": "spilled"}),
            (stats.replayed, {"outcome": "replayed"}),
            (stats.duplicates, {"outcome": "duplicate"}),
            (stats.rejected, {"outcome": "rejected"}),
            (stats.dropped, {"outcome": "dropped"}),
        ],
        description="Request log rows by what became of them",
    )
    metrics.gauge("gateway.request_log.buffered", lambda: writer.buffered, description="Rows in memory")


async def _probe(pool: asyncpg.Pool, writer: LogWriter) -> dict[str, object]:
    try:
        await database_call("probe", pool.fetchval("SELECT 1"), HEALTH_PROBE_SECONDS)
        # Answering, but not taking the log's rows (schema gone, permissions): they pile up.
        state = "degraded" if writer.connected is False else "ok"
    except Exception:  # whatever failed, /health answers, and says so
        state = "down"
    return {"state": state, "log_writer": writer.snapshot()}
