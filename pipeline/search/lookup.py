"""Find reference images for a query: cache, circuit breaker, provider, URL checks, in that order.

Never raises for the provider's sake: every way a search can go wrong is an outcome
(`failed`, with a reason) so the request goes on without references.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from typing import Literal

import msgspec

from pipeline.breaker import BreakerState, CircuitBreaker
from pipeline.search.cache import SearchCache
from pipeline.search.protocol import ImageHit, ImageSearch, SearchFailed
from pipeline.types import Reference
from pipeline.urls import is_public_url

log = logging.getLogger(__name__)

Outcome = Literal["skipped", "failed", "found"]

# Ask the provider for more candidates than we keep: some are dropped by the URL checks.
MIN_CANDIDATES = 20
CANDIDATES_PER_RESULT = 5
EMPTY_RESULT_TTL = 300.0
CIRCUIT_OPEN = "circuit open"
# C0 and C1 controls, DEL and bidirectional overrides: a title is shown to people as plain text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class LookupResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    references: list[Reference] = []
    reason: str | None = None
    cache_hit: bool = False

    @property
    def summary(self) -> str:
        """What the stream reports: `skipped`, `failed` or `found N`."""
        return f"found {len(self.references)}" if self.outcome == "found" else self.outcome


class ReferenceLookup:
    def __init__(
        self,
        provider: ImageSearch,
        cache: SearchCache,
        breaker: CircuitBreaker,
        *,
        max_results: int = 4,
        cache_ttl: float = 86400.0,
        timeout: float = 3.0,
    ) -> None:
        self.provider = provider
        self.cache = cache
        self.breaker = breaker
        self.max_results = max_results
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        # By how each lookup ended: found, cache_hit, failed, circuit_open (read by /metrics).
        self.lookups: Counter[str] = Counter()

    async def find(self, query: str) -> LookupResult:
        result = await self._find(query)
        self.lookups[_kind(result)] += 1
        return result

    async def _find(self, query: str) -> LookupResult:
        key = f"refsearch:{self.provider.name}:{self.max_results}:{' '.join(query.lower().split())}"
        cached = await self._cached(key)
        if cached is not None:
            return LookupResult(outcome="found", references=cached, cache_hit=True)
        if not await self.breaker.allow():
            return LookupResult(outcome="failed", reason=CIRCUIT_OPEN)
        candidates = max(MIN_CANDIDATES, self.max_results * CANDIDATES_PER_RESULT)
        try:
            # The whole call, body included, within one deadline, whatever the transport does.
            async with asyncio.timeout(self.timeout):
                hits = await self.provider.search(query, limit=candidates)
        except TimeoutError:
            await self.breaker.record_failure()
            log.warning("reference search timed out after %gs", self.timeout)
            reason = f"{self.provider.name} timed out after {self.timeout:g}s"
            return LookupResult(outcome="failed", reason=reason)
        except SearchFailed as exc:
            await self.breaker.record_failure()
            log.warning("reference search failed: %s", exc)
            return LookupResult(outcome="failed", reason=str(exc))
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        await self.breaker.record_success()
        references = self.select(hits)
        await self._store(key, references)
        return LookupResult(outcome="found", references=references)

    def select(self, hits: list[ImageHit]) -> list[Reference]:
        """The provider's order, unsafe and repeated image URLs dropped, at most max_results."""
        chosen: dict[str, Reference] = {}
        for hit in hits:
            if hit.image_url in chosen or not is_public_url(hit.image_url):
                continue
            source = hit.source_url if hit.source_url and is_public_url(hit.source_url) else None
            chosen[hit.image_url] = Reference(
                kind="search", image_url=hit.image_url, title=_clip(hit.title), source_url=source
            )
            if len(chosen) == self.max_results:
                break
        return list(chosen.values())

    async def _cached(self, key: str) -> list[Reference] | None:
        # A broken cache costs a provider call, never the request.
        try:
            return await self.cache.get(key)
        except Exception as exc:
            log.warning("reference cache read failed: %r", exc)
            return None

    async def _store(self, key: str, references: list[Reference]) -> None:
        # Nothing found may change soon (a look from last night): keep that answer briefly.
        ttl = self.cache_ttl if references else min(self.cache_ttl, EMPTY_RESULT_TTL)
        try:
            await self.cache.set(key, references, ttl)
        except Exception as exc:
            log.warning("reference cache write failed: %r", exc)

    async def health(self) -> dict[str, object]:
        closed = await self.breaker.state() is BreakerState.CLOSED
        breaker = self.breaker.snapshot()
        state = "ok" if closed else "degraded"
        return {"state": state, "provider": self.provider.name, "breaker": breaker}


def _kind(result: LookupResult) -> str:
    if result.cache_hit:
        return "cache_hit"
    return "circuit_open" if result.reason == CIRCUIT_OPEN else result.outcome


def _clip(title: str | None, limit: int = 200) -> str | None:
    """A provider's title as one short line of text: controls gone, whitespace collapsed."""
    if not title:
        return None
    title = " ".join(_CONTROL.sub(" ", title).split())
    if len(title) > limit:
        return title[: limit - 1] + "\u2026"
    return title or None
