"""What the pipeline needs from a shared Redis: a client, whether it answers, and its key prefix.

gateway/redis.py holds the one connection (timeouts, cluster, health, reconnects); the cache,
the limiter and anything else that shares state across instances take it through `RedisLink`
and keep working in memory (or fail open) while `available` is False.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

RedisClient: TypeAlias = Redis | RedisCluster

# What a Redis call raises when Redis is unreachable, slow or restarting. aiocache wraps
# its calls in asyncio.wait_for, hence TimeoutError; a refused socket can surface as OSError;
# a cluster with no node answering raises RedisClusterException, which is no RedisError.
UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, TimeoutError)


class RedisLink(Protocol):
    client: RedisClient
    prefix: str  # every key this gateway writes starts with it

    @property
    def available(self) -> bool:
        """False from a failed call until a background ping answers again."""
        ...

    def failed(self, exc: BaseException) -> None:
        """Report a call that raised one of UNAVAILABLE: callers skip Redis until it is back."""
        ...
