"""Cached search results: the same look asked twice costs one provider call.

`SearchCache` is the protocol; the in-process TTL cache is the default. A Redis-backed one
only needs get/set over the encoded references (see `encode`/`decode`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import msgspec

from pipeline.types import Reference

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Reference])


def encode(references: list[Reference]) -> bytes:
    return _encoder.encode(references)


def decode(raw: bytes) -> list[Reference]:
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
