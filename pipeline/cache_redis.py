"""The intent cache's Redis layer: aiocache on the gateway's own Redis client, entries as msgpack.

pipeline/cache.py builds it when Redis is configured; the near and memory layers are its own.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiocache import RedisCache
from aiocache.base import BaseCache
from aiocache.serializers import BaseSerializer

from pipeline.redis_link import RedisClient
from pipeline.types import IntentClassification


class MsgspecSerializer(BaseSerializer):  # type: ignore[misc]  # aiocache is untyped
    """IntentClassification <-> msgpack bytes; anything undecodable reads as a miss."""

    DEFAULT_ENCODING = None  # bytes: aiocache must not decode what Redis returns

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(IntentClassification)

    def dumps(self, value: IntentClassification) -> bytes:
        return self._encoder.encode(value)

    def loads(self, value: bytes | None) -> IntentClassification | None:
        if value is None:
            return None
        try:
            return self._decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None


class SharedRedisCache(RedisCache):  # type: ignore[misc]
    """aiocache's Redis cache on the gateway's client (its timeouts, cluster, reconnects).

    RedisBackend.__init__ would build a second connection pool; the connection is owned
    and closed by gateway/redis.py, so this skips it and never closes the client.
    """

    def __init__(self, client: RedisClient, **kwargs: Any) -> None:
        BaseCache.__init__(self, **kwargs)
        self.client = client
        self.endpoint, self.port = "shared", 0  # only read by RedisCache.__repr__

    async def _set(
        self, key: str, value: Any, ttl: Any = None, _cas_token: Any = None, _conn: Any = None
    ) -> Any:
        # redis-py 8 deprecates SETEX, which RedisBackend uses; SET ... EX is the same thing.
        if _cas_token is not None:
            return await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
        return await self.client.set(key, value, ex=ttl)

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        return None
