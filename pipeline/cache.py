"""The intent cache: one classification per prompt and context, shared by every instance.

aiocache stores msgpack-encoded results in Redis when a `RedisLink` is given and available;
a bounded in-process memory cache holds them otherwise (no Redis configured, or Redis unreachable:
the cache then keeps working per instance and goes back to Redis when it answers). In front
of either, a small near cache keeps what this instance saw in the last NEAR_TTL seconds, so a
hot prompt costs no Redis round trip: an entry never changes under its key (the classifier's
version is part of it), so serving it from there changes nothing but the cost.

Keys are stable across processes and releases of unrelated code: a blake2b digest of the
normalized prompt, the context features classifiers look at, and the classifier's name and
version (never Python's per-process `hash()`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable

import msgspec

from observability.spans import current_trace_id, pinned_context
from pipeline.cache_redis import MsgspecSerializer, SharedRedisCache
from pipeline.cancellation import raise_if_cancelled
from pipeline.protocols import Classifier
from pipeline.redis_link import UNAVAILABLE, RedisLink
from pipeline.types import ClassifierInput, IntentClassification, IntentSource

log = logging.getLogger(__name__)

# Bump when the key's inputs or the stored type change shape: old entries then just miss.
KEY_SCHEMA = 1
MEMORY_ENTRIES = 10_000
NEAR_ENTRIES = 1_000
NEAR_TTL = 30.0  # seconds
# A classifier that answers with a fallback (LLM failed, the rules answered) says so here;
# such answers are never cached, so the next request tries the real classifier again.
FALLBACK_FLAG = "fallback_used"
# An answer given because the better one would have taken too long under load (the embedded
# classifier's fast tier while MiniLM is busy): the next request, maybe on a calmer instance,
# should get the better one.
PROVISIONAL_FLAG = "provisional"
MODEL_CLASSIFIERS = frozenset({"local", "llm", "cascade"})

Classify = Callable[[], Awaitable[IntentClassification]]


def normalize(prompt: str) -> str:
    """Same words, same key: Unicode compatibility forms, case and spacing do not matter."""
    return " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())


def cache_key(classifier: Classifier, query: ClassifierInput) -> str:
    features = msgspec.msgpack.encode(
        [
            KEY_SCHEMA,
            classifier.name,
            classifier.version,
            normalize(query.prompt),
            bool(query.working_images),
            bool(query.uploaded_images),
            sorted(set(query.mentions)),
        ]
    )
    return hashlib.blake2b(features, digest_size=16).hexdigest()


def cacheable(classifier: Classifier, result: IntentClassification) -> bool:
    if result.metadata.get(FALLBACK_FLAG) or result.metadata.get(PROVISIONAL_FLAG):
        return False
    # These answer from the keyword rules only when they themselves failed.
    return not (classifier.name in MODEL_CLASSIFIERS and result.source is IntentSource.RULES)


class MemoryCache:
    """Results kept by this instance, for `ttl` seconds, at most `entries` (oldest go first).

    Two of them: the near cache in front of Redis, and the whole store without Redis (or while
    it is unreachable). An entry expires when read, never by a loop timer: aiocache's own memory
    backend arms `loop.call_later(ttl)` per key, and a timer keeps the context it was armed in,
    so every miss kept its request (task, span, stream) alive for the TTL. Plain dicts, not
    aiocache: its wrappers (timeout, plugins, serializer) were ~5% of a miss on one core, for a
    store that needs none of them.
    """

    def __init__(self, *, entries: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.entries, self.ttl, self.clock = entries, ttl, clock
        self._items: dict[str, tuple[float, IntentClassification]] = {}

    def get(self, key: str) -> IntentClassification | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            del self._items[key]
            return None
        return item[1]

    def put(self, key: str, result: IntentClassification) -> None:
        self._items.pop(key, None)  # re-inserted last: eviction goes by age of the entry
        if len(self._items) >= self.entries:
            del self._items[next(iter(self._items))]
        self._items[key] = (self.clock() + self.ttl, result)

    def __len__(self) -> int:
        return len(self._items)


class _Flight:
    """One in-flight lookup-or-classify and how many requests wait for it."""

    __slots__ = ("leader", "task", "waiters")

    def __init__(self, task: asyncio.Task[tuple[IntentClassification, bool]], leader: str | None) -> None:
        self.task = task
        self.waiters = 0
        self.leader = leader  # the trace id of the request that started it: where its work is traced


class IntentCache:
    """get-or-classify with a TTL, Redis-or-memory storage and single flight per instance."""

    def __init__(self, *, ttl: int, redis: RedisLink | None, timeout: float) -> None:
        self.ttl = ttl
        self.redis = redis
        self.near = MemoryCache(entries=NEAR_ENTRIES, ttl=min(NEAR_TTL, ttl))
        self.memory = MemoryCache(entries=MEMORY_ENTRIES, ttl=ttl)
        self.remote = (
            None
            if redis is None
            # aiocache's own deadline backs up the socket timeouts (a hung Lua script, DNS).
            else SharedRedisCache(
                redis.client,
                serializer=MsgspecSerializer(),
                namespace=f"{redis.prefix}intent",
                timeout=timeout,
            )
        )
        self._inflight: dict[str, _Flight] = {}
        # Counters for metrics.
        self.hits = 0
        self.near_hits = 0  # of which answered by the near cache
        self.misses = 0
        self.coalesced = 0  # requests that waited for an identical in-flight classification
        self.remote_errors = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None and self.redis.available else "memory"

    async def get_or_classify(
        self, classifier: Classifier, query: ClassifierInput, classify: Classify,
        joined: Callable[[str], None] | None = None,
    ) -> tuple[IntentClassification, bool]:
        """(result, cache_hit). Concurrent identical misses share one `classify()` call; one that
        joins another's is told (`joined`) the trace id that holds the shared call's spans.

        A hit, and a miss the classifier answers at once, are answered in the caller's task.
        Other misses share work that runs in its own task: a waiting request that is cancelled
        (client gone) leaves it running for the others; when the last waiter has gone, it is
        cancelled too, so its classification slot frees at once.
        """
        if not self.enabled:
            return await classifier.quick_answer(query) or await classify(), False
        key = cache_key(classifier, query)
        cached = self.near.get(key)
        if cached is not None:
            self.hits += 1
            self.near_hits += 1
            return cached, True
        flight = self._inflight.get(key)
        if flight is None:
            cached = await self._get(key)
            if cached is not None:
                self.hits += 1
                self.near.put(key, cached)
                return cached, True
            # An answer that needs no waiting needs no flight to share.
            answer = await classifier.quick_answer(query)
            if answer is not None:
                self.misses += 1
                await self._store(classifier, key, answer)
                return answer, False
            flight = self._inflight.get(key)  # another miss may have taken off meanwhile
        if flight is None:
            # Other requests may join this flight and outlive this one: its outside calls stay
            # children of the stage that started it, whatever this request does next.
            task = asyncio.create_task(
                self._classify(classifier, key, classify),
                name=f"intent-cache-{key[:8]}",
                context=pinned_context(),
            )
            flight = self._inflight[key] = _Flight(task, current_trace_id())
            task.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.coalesced += 1
            if joined is not None and flight.leader is not None:
                joined(flight.leader)
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()
                # Out of the table now, not when the task has wound down (a loop turn later): a
                # request arriving in between would join a cancelled flight and lose its answer.
                if self._inflight.get(key) is flight:
                    del self._inflight[key]

    def _finished(self, key: str, task: asyncio.Task[tuple[IntentClassification, bool]]) -> None:
        flight = self._inflight.get(key)
        if flight is not None and flight.task is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters re-raise it; no "never retrieved" noise

    async def _classify(
        self, classifier: Classifier, key: str, classify: Classify
    ) -> tuple[IntentClassification, bool]:
        self.misses += 1
        result = await classify()
        await self._store(classifier, key, result)
        return result, False

    async def _store(self, classifier: Classifier, key: str, result: IntentClassification) -> None:
        if cacheable(classifier, result):
            self.near.put(key, result)
            await self._set(key, result)

    async def _get(self, key: str) -> IntentClassification | None:
        if self.remote is not None and self.redis is not None and self.redis.available:
            try:
                result: IntentClassification | None = await self.remote.get(key)
                raise_if_cancelled()  # aiocache's wait_for may have dropped it (pipeline/cancellation.py)
                return result
            except UNAVAILABLE as exc:
                self._remote_failed(exc)
        return self.memory.get(key)

    async def _set(self, key: str, result: IntentClassification) -> None:
        if self.remote is not None and self.redis is not None and self.redis.available:
            try:
                await self.remote.set(key, result, ttl=self.ttl)
                raise_if_cancelled()
                return
            except UNAVAILABLE as exc:
                self._remote_failed(exc)
        self.memory.put(key, result)

    def _remote_failed(self, exc: BaseException) -> None:
        assert self.redis is not None
        self.remote_errors += 1
        self.redis.failed(exc)

    def stats(self) -> dict[str, object]:
        lookups = max(self.hits + self.misses, 1)
        return {
            "enabled": self.enabled,
            "backend": self.backend,
            "hits": self.hits,
            "near_hits": self.near_hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups,
            "coalesced": self.coalesced,
            "remote_errors": self.remote_errors,
            "memory_entries": len(self.memory),
            "near_entries": len(self.near),
        }

    async def close(self) -> None:
        tasks = [flight.task for flight in self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
