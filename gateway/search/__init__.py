"""Image search over HTTP for reference search: the providers (brave.py, searxng.py, over
transport.py), and opening the configured one for the app's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from gateway.config import Settings
from gateway.llm import breaker_policy
from gateway.search.brave import BraveImageSearch
from gateway.search.searxng import SearxngSearch
from observability.metrics import Metrics
from pipeline.breaker import CircuitBreaker, upstream_key
from pipeline.breaker_redis import RedisBreakerStore
from pipeline.redis_link import RedisLink
from pipeline.search.cache import MemorySearchCache, RedisSearchCache, SearchCache
from pipeline.search.lookup import ReferenceLookup
from pipeline.search.protocol import ImageSearch

USER_AGENT = "intent-gateway/0.1 (reference search)"


@asynccontextmanager
async def open_reference_lookup(
    settings: Settings,
    redis: RedisLink | None = None,
    *,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
) -> AsyncIterator[ReferenceLookup | None]:
    """The lookup over one ClientSession, closed on exit; None when no provider is configured.

    The session talks only to the configured provider (a self-hosted SearXNG is often on a
    private network, so no egress guard here); result URLs are returned, never fetched.
    """
    provider_name = settings.search_provider()
    if provider_name is None:
        yield None
        return
    timeout = aiohttp.ClientTimeout(total=settings.reference_search_timeout)
    async with aiohttp.ClientSession(
        timeout=timeout, headers={"User-Agent": USER_AGENT}, trace_configs=trace_configs
    ) as session:
        provider: ImageSearch
        cache: SearchCache = RedisSearchCache(redis) if redis is not None else MemorySearchCache()
        if provider_name == "searxng":
            assert settings.searxng_url is not None
            provider = SearxngSearch(session, settings.searxng_url)
        else:
            assert settings.brave_search_api_key is not None
            provider = BraveImageSearch(session, settings.brave_search_api_key)
        yield ReferenceLookup(
            provider,
            cache,
            # Shared through Redis like the LLM's: every instance stops calling a dead provider.
            CircuitBreaker(
                "reference_search",
                breaker_policy(settings),
                store=RedisBreakerStore(redis) if redis is not None else None,
                # Brave by its key: one deployment's revoked or spent key must not open another's.
                key=upstream_key("reference_search", provider_name,
                                 settings.searxng_url or settings.brave_search_api_key or ""),
            ),
            max_results=settings.reference_search_results,
            cache_ttl=settings.reference_search_cache_ttl,
            timeout=settings.reference_search_timeout,
        )


def observe_reference_search(metrics: Metrics, lookup: ReferenceLookup) -> None:
    """Lookups by outcome and the circuit's state, read when /metrics is scraped."""
    metrics.counter(
        "gateway.reference_search.lookups",
        lambda: [(n, {"outcome": outcome}) for outcome, n in lookup.lookups.items()],
        description="Reference searches by outcome (found, cache_hit, failed, circuit_open)",
    )
    metrics.gauge(
        "gateway.reference_search.circuit_open",
        lambda: int(lookup.breaker.snapshot()["state"] != "closed"),  # sync: read at scrape time
        description="1 while the search provider's circuit breaker is open or half-open",
    )
