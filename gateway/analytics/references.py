"""Per-user @tags in Postgres: the ReferenceStore the prompt stage uses when a database is set."""

from __future__ import annotations

import asyncpg

from gateway.analytics.pool import database_call


class PostgresReferenceStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def resolve(self, user_id: str, tags: tuple[str, ...]) -> dict[str, str]:
        rows = await database_call("resolve references", self._pool.fetch(
            "SELECT tag, image_url FROM user_references WHERE user_id = $1 AND tag = ANY($2::text[])",
            user_id, list(tags),
        ))
        return {row["tag"]: row["image_url"] for row in rows}

    async def save(self, user_id: str, tag: str, image_url: str) -> None:
        await database_call("save the reference", self._pool.execute(
            "INSERT INTO user_references (user_id, tag, image_url) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id, tag)"
            " DO UPDATE SET image_url = EXCLUDED.image_url, updated_at = now()",
            user_id, tag.lower(), image_url,
        ))

    async def list(self, user_id: str) -> dict[str, str]:
        rows = await database_call("list references", self._pool.fetch(
            "SELECT tag, image_url FROM user_references WHERE user_id = $1 ORDER BY tag", user_id
        ))
        return {row["tag"]: row["image_url"] for row in rows}
