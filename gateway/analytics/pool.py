"""The asyncpg pool, and Postgres failures as the gateway's own error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from gateway.errors import DatabaseUnavailable

CONNECT_TIMEOUT = 2.0  # seconds: an unreachable database is noticed quickly
QUERY_TIMEOUT = 2.0  # reads on the request path (references, analytics endpoints)

T = TypeVar("T")


async def create_pool(
    url: str, *, init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
) -> asyncpg.Pool:
    # min_size=0: creating the pool connects to nothing, so a database that is down at
    # start-up delays nothing; connections open on first use and after a network cut.
    pool = await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=4,
        timeout=CONNECT_TIMEOUT,
        command_timeout=30.0,
        max_inactive_connection_lifetime=60.0,
        init=init,  # per connection: the tracing query logger
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL).

    That reset is a round trip per release, i.e. per reference lookup on the request path, and
    undoes nothing here: no SET, LISTEN or cursor outlives its call, and the migration releases
    its advisory lock itself. asyncpg still rolls back a transaction left open before this runs.
    """


async def close_pool(pool: asyncpg.Pool, grace: float = 5.0) -> None:
    try:
        await asyncio.wait_for(pool.close(), grace)
    except TimeoutError:
        pool.terminate()


def is_unreachable(exc: BaseException) -> bool:
    """The database cannot be reached (yet): worth waiting for, unlike a failing statement."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        # 08: connection; 53: out of resources (53300: too many connections); 55000: not accepting
        # connections (ALLOW_CONNECTIONS false); 57P01-03: shutting down or starting; 3D000: no
        # database yet. Each passes with time; a failing statement does not.
        return state.startswith(("08", "53")) or state in ("55000", "57P01", "57P02", "57P03", "3D000")
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)


async def within(seconds: float, operation: Awaitable[T]) -> T:
    """`operation`'s result, or TimeoutError after `seconds` without waiting for it to stop.

    The operation runs in a task of its own, cancelled at the deadline but not waited for:
    asyncpg gives a connection whose query was cancelled back to the pool only once the server
    acknowledges the cancel, up to command_timeout (30 s) from a hung server, and an
    `asyncio.timeout` around the query held its caller (a request, /health, the log writer)
    for all of that.
    """
    task = asyncio.ensure_future(operation)
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that arrives
        # with the result (pipeline/cancellation.py). shield reads the outcome of a task left behind.
        async with asyncio.timeout(seconds):
            return await asyncio.shield(task)
    finally:
        if not task.done():  # timed out, or our caller was cancelled: wind down on its own
            task.cancel()


async def database_call(what: str, operation: Awaitable[T], seconds: float = QUERY_TIMEOUT) -> T:
    """`operation`'s result within `seconds` (see `within`), or DatabaseUnavailable; driver
    failures are too."""
    try:
        return await within(seconds, operation)
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot {what}: the database is unavailable") from exc
