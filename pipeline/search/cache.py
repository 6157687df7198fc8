"""Cached search results: the same look asked twice costs one provider call.

`SearchCache` is the protocol. In memory by default; with REDIS_URL the cache is shared by
every instance through the gateway's one Redis connection, and falls back to memory while
Redis is unreachable.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import msgspec

from pipeline.redis_link import UNAVAILABLE, RedisLink
from pipeline.types import Reference

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Reference])


def encode(references: list[Reference]) -> bytes:
    return _encoder.encode(references)


def decode(raw: bytes | str) -> list[Reference]:
    return _decoder.decode(raw)


class SearchCache(Protocol):
    async def get(self, key: str) -> list[Reference] | None: ...

    async def set(self, key: str, references: list[Reference], ttl: float) -> None: ...


class MemorySearchCache:
    """Per-process, bounded (least recently used goes first), entries expire after their ttl."""

    def __init__(self, max_entries: int = 1024, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, list[Reference]]] = OrderedDict()

    async def get(self, key: str) -> list[Reference] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, references = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return list(references)

    async def set(self, key: str, references: list[Reference], ttl: float) -> None:
        self._entries[key] = (self._clock() + ttl, list(references))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class RedisSearchCache:
    """Shared across instances via the gateway's Redis connection; memory while it is away."""

    def __init__(self, link: RedisLink, fallback: MemorySearchCache | None = None) -> None:
        self.link = link
        self.fallback = fallback or MemorySearchCache()

    async def get(self, key: str) -> list[Reference] | None:
        if not self.link.available:
            return await self.fallback.get(key)
        try:
            raw = await self.link.client.get(self.link.prefix + key)
        except UNAVAILABLE as exc:
            self.link.failed(exc)
            return await self.fallback.get(key)
        if raw is None:
            return None
        try:
            return decode(raw)
        except msgspec.DecodeError:
            return None  # written by an incompatible version: a miss, overwritten on set

    async def set(self, key: str, references: list[Reference], ttl: float) -> None:
        if not self.link.available:
            await self.fallback.set(key, references, ttl)
            return
        try:
            await self.link.client.set(self.link.prefix + key, encode(references), ex=max(1, round(ttl)))
        except UNAVAILABLE as exc:
            self.link.failed(exc)
            await self.fallback.set(key, references, ttl)
