"""The one Redis connection: short timeouts, standalone or cluster, health, and reconnection.

Nothing here knows about caching or limits (pipeline/cache.py, pipeline/limits.py); other
features that share state across instances take the same connection from `app[REDIS]`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.appkeys import HEALTH_PROBES, INTENT_CACHE, METRICS, REDIS, SETTINGS, TRACING
from gateway.config import Settings
from pipeline.cache import IntentCache
from pipeline.cancellation import raise_if_cancelled
from pipeline.redis_link import UNAVAILABLE, RedisClient

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# redis-py pings a pooled connection idle this long before reusing it, so a connection
# left over from before a Redis restart is replaced instead of failing a request.
IDLE_CHECK_SECONDS = 10


def parse_url(url: str, cluster_flag: bool) -> tuple[str, bool]:
    """(plain redis:// URL, whether it names a cluster): redis+cluster:// or the flag."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in CLUSTER_SCHEMES:
        return f"{CLUSTER_SCHEMES[scheme]}://{rest}", True
    return url, cluster_flag


def connect(settings: Settings) -> RedisClient:
    """A client that connects lazily; every call gives up after REDIS_TIMEOUT."""
    assert settings.redis_url is not None
    url, cluster = parse_url(settings.redis_url, settings.redis_cluster)
    # One retry, only on a broken connection (Redis restarted): a timeout is not retried,
    # so a hung Redis costs one REDIS_TIMEOUT per call, never a backoff series.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "health_check_interval": IDLE_CHECK_SECONDS,
        "retry": retry,
        "max_connections": settings.redis_max_connections,
    }
    client: RedisClient
    if cluster:
        client = RedisCluster.from_url(url, **options)
        _wait_for_a_connection(client, settings.redis_max_connections, settings.redis_timeout)
    else:
        # A command finds every connection busy (a burst of misses, each its own GET): it waits
        # up to REDIS_TIMEOUT for one. redis-py's default pool raised MaxConnectionsError at
        # 100, which read as "Redis unreachable": limits failed open, the cache went to memory.
        pool = BlockingConnectionPool.from_url(url, timeout=settings.redis_timeout, **options)
        client = Redis.from_pool(pool)
    _keep_cancellations(client)
    return client


def _wait_for_a_connection(client: RedisCluster, connections: int, timeout: float) -> None:
    """Commands past `connections` in flight wait up to `timeout` for one to finish, as the
    standalone client's BlockingConnectionPool makes them. redis-py's cluster nodes have no
    waiting pool: a burst past the cap raised MaxConnectionsError at once, which read as "Redis
    unreachable" (limits failed per RATE_LIMIT_FAIL_MODE, the cache went to memory). One count
    for the client, so no node can be asked for more connections than its cap."""
    free = asyncio.Semaphore(connections)
    execute = client.execute_command

    async def execute_command(*args: Any, **options: Any) -> Any:
        try:
            async with asyncio.timeout(timeout):
                await free.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no free connection within {timeout} s") from None
        try:
            return await execute(*args, **options)
        finally:
            free.release()

    client.execute_command = execute_command  # type: ignore[method-assign]


def _keep_cancellations(client: RedisClient) -> None:
    """Every command re-raises a cancellation that redis-py's wait_for dropped (see
    pipeline/cancellation.py): the circuit breaker's reads, in the task that holds a
    classification slot, were one place a client's hang-up got lost."""
    execute = client.execute_command

    async def execute_command(*args: Any, **options: Any) -> Any:
        reply = await execute(*args, **options)
        raise_if_cancelled()
        return reply

    client.execute_command = execute_command  # type: ignore[method-assign]


class RedisConnection:
    """A shared client plus what the gateway knows of its health (a `RedisLink`)."""

    def __init__(self, client: RedisClient, *, cluster: bool, prefix: str, health_interval: float) -> None:
        self.client = client
        self.cluster = cluster
        self.prefix = prefix
        self.health_interval = health_interval
        self.available = False  # until the first ping answers
        self.last_error: str | None = None
        self.last_error_kind: str | None = None  # its exception's name: all /health shows
        self.failures = 0  # calls that found Redis unreachable
        self.recoveries = 0  # times Redis came back after being unreachable

    async def ping(self) -> bool:
        """Ask Redis now; the answer updates `available`."""
        try:
            await self.client.ping()
        except UNAVAILABLE as exc:
            self.failed(exc)
            return False
        if not self.available:
            if self.last_error is not None:
                self.recoveries += 1
                log.warning("redis is reachable again; using it for cache and limits")
            self.available = True
        return True

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error_kind = type(exc).__name__
        self.last_error = f"{self.last_error_kind}: {exc}"
        if self.available:
            log.warning(
                "redis unreachable (%s); cache in memory, limits fail per RATE_LIMIT_FAIL_MODE",
                self.last_error,
            )
        self.available = False

    async def watch(self) -> None:
        """Ping forever: notices Redis leaving between requests and coming back."""
        while True:
            await asyncio.sleep(self.health_interval)
            await self.ping()

    async def probe(self) -> dict[str, object]:
        """The /health entry: a live ping, so it reports the state of right now."""
        mode = "cluster" if self.cluster else "standalone"
        if await self.ping():
            return {"state": "ok", "mode": mode}
        # The error's kind only: /health needs no key, and the message names Redis's host and
        # port. The whole message is in the log and in the admin-only JSON metrics.
        return {"state": "degraded", "mode": mode, "error": self.last_error_kind, "serving": "memory"}

    def stats(self) -> dict[str, object]:
        return {
            "configured": True,
            "available": self.available,
            "mode": "cluster" if self.cluster else "standalone",
            "failures": self.failures,
            "recoveries": self.recoveries,
            "last_error": self.last_error,
        }


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[RedisConnection | None]:
    """The connection for the app's lifetime, or None when REDIS_URL is unset.

    Start-up never waits for Redis: if it is down the gateway serves from memory and the
    background ping switches to Redis as soon as it answers.
    """
    if not settings.redis_url:
        yield None
        return
    _, cluster = parse_url(settings.redis_url, settings.redis_cluster)
    connection = RedisConnection(
        connect(settings),
        cluster=cluster,
        prefix=settings.redis_key_prefix,
        health_interval=settings.redis_health_interval,
    )
    if not await connection.ping():
        log.warning("redis at start-up: %s; starting without it", connection.last_error)
    watcher = asyncio.create_task(connection.watch(), name="redis-health")
    try:
        yield connection
    finally:
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher
        await connection.client.aclose()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: `app[REDIS]` (None without REDIS_URL) and its /health probe."""
    async with open_redis(app[SETTINGS]) as connection:
        app[REDIS] = connection
        if connection is not None:
            app[HEALTH_PROBES]["redis"] = connection.probe
            app[TRACING].instrument_redis(connection.client)
            app[METRICS].gauge(
                "gateway.redis.available", lambda: int(connection.available), description="1: Redis answers"
            )
            app[METRICS].counter(
                "gateway.redis.failures",
                lambda: connection.failures,
                description="Redis calls that found it unreachable or timed out",
            )
        yield


async def intent_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after redis_ctx): the intent cache, on Redis when there is one."""
    settings = app[SETTINGS]
    cache = IntentCache(ttl=settings.intent_cache_ttl, redis=app[REDIS], timeout=settings.redis_timeout)
    app[INTENT_CACHE] = cache
    app[METRICS].counter(
        "gateway.cache.lookups",
        lambda: [(cache.hits, {"result": "hit"}), (cache.misses, {"result": "miss"})],
        description="Intent cache lookups by result",
    )
    app[METRICS].counter(
        "gateway.cache.coalesced",
        lambda: cache.coalesced,
        description="Requests that shared an identical in-flight classification",
    )
    yield
    await cache.close()
