"""Reads from the analytics materialized views, and their periodic refresh."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg
import msgspec

from gateway.analytics.pool import database_call

log = logging.getLogger(__name__)

MAX_HOURS = 7 * 24  # what intent_analytics keeps
MAX_DAYS = 30  # what cost_analytics keeps


class IntentBucket(msgspec.Struct, kw_only=True):
    classified_workflow: str
    hour: datetime
    total_requests: int
    avg_confidence: float
    avg_processing_time: float  # milliseconds
    fallback_count: int
    cache_hits: int
    rate_limited_count: int


class CostBucket(msgspec.Struct, kw_only=True):
    user_id: str
    day: datetime
    total_generations: int
    total_cost: float | None  # actual cost, known only after generation
    avg_cost_per_generation: float | None
    successful_generations: int
    total_estimated_cost: float | None
    avg_estimated_cost: float | None


class Analytics:
    """The views behind the analytics endpoints, and when they were last refreshed."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.refreshed_at: datetime | None = None

    async def refresh(self) -> bool:
        """REFRESH ... CONCURRENTLY both views; False if another gateway is refreshing them."""
        async with self._pool.acquire() as conn:
            refreshed: bool = await conn.fetchval("SELECT refresh_analytics_views()")
            if refreshed:
                self.refreshed_at = await conn.fetchval("SELECT now()")
        return refreshed

    async def intents(self, hours: int) -> list[IntentBucket]:
        rows = await database_call("read intent analytics", self._pool.fetch(
            "SELECT * FROM intent_analytics"
            " WHERE hour >= date_trunc('hour', now() - make_interval(hours => $1), 'UTC')"
            " ORDER BY hour DESC, classified_workflow",
            hours,
        ))
        return [IntentBucket(**dict(row)) for row in rows]

    async def costs(self, days: int) -> list[CostBucket]:
        rows = await database_call("read cost analytics", self._pool.fetch(
            "SELECT * FROM cost_analytics"
            " WHERE day >= date_trunc('day', now() - make_interval(days => $1), 'UTC')"
            " ORDER BY day DESC, user_id",
            days,
        ))
        return [CostBucket(**dict(row)) for row in rows]
