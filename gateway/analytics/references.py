"""Per-user @tags in Postgres: the ReferenceStore the prompt stage uses when a database is set."""

from __future__ import annotations

import asyncpg

from gateway.analytics.pool import database_call


class PostgresReferenceStore:
    def __init__(self, pool: asyncpg.Pool, *, per_user: int) -> None:
        self._pool = pool
        self.per_user = per_user  # Settings.max_tags_per_user

    async def resolve(self, user_id: str, tags: tuple[str, ...]) -> dict[str, str]:
        rows = await database_call("resolve references", self._pool.fetch(
            "SELECT tag, image_url FROM user_references WHERE user_id = $1 AND tag = ANY($2::text[])",
            user_id, list(tags),
        ))
        return {row["tag"]: row["image_url"] for row in rows}

    async def save(self, user_id: str, tag: str, image_url: str) -> bool:
        # A new tag only under the cap (saves at once may pass it by a few: a bound, not a quota).
        status = await database_call("save the reference", self._pool.execute(
            "INSERT INTO user_references (user_id, tag, image_url) SELECT $1, $2, $3"
            " WHERE EXISTS (SELECT 1 FROM user_references WHERE user_id = $1 AND tag = $2)"
            " OR (SELECT count(*) FROM user_references WHERE user_id = $1) < $4"
            " ON CONFLICT (user_id, tag)"
            " DO UPDATE SET image_url = EXCLUDED.image_url, updated_at = now()",
            user_id, tag, image_url, self.per_user,
        ))
        return bool(status.endswith(" 1"))  # "INSERT 0 1": saved; "INSERT 0 0": refused

    async def list(self, user_id: str) -> dict[str, str]:
        rows = await database_call("list references", self._pool.fetch(
            "SELECT tag, image_url FROM user_references WHERE user_id = $1 ORDER BY tag", user_id
        ))
        return {row["tag"]: row["image_url"] for row in rows}

    async def delete(self, user_id: str, tag: str) -> bool:
        status = await database_call("delete the reference", self._pool.execute(
            "DELETE FROM user_references WHERE user_id = $1 AND tag = $2", user_id, tag
        ))
        return bool(status == "DELETE 1")  # (user_id, tag) is the key: one row or none
