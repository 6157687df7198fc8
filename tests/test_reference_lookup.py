"""The lookup behind the references step: cache, breaker, provider, in isolation."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aioresponses import aioresponses
from redis.asyncio import Redis

from gateway.config import ConfigError, Settings
from gateway.search.searxng import SearxngSearch
from gateway.search.transport import MAX_RESPONSE_BYTES
from pipeline.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from pipeline.search.cache import MemorySearchCache, RedisSearchCache, decode, encode
from pipeline.search.lookup import ReferenceLookup
from pipeline.search.protocol import ImageHit, SearchFailed
from pipeline.types import Reference
from tests.redis_servers import needs_redis

SEARX_SEARCH = re.compile(r"^http://searx\.test/search\?.*$")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class BrokenCache:
    async def get(self, key: str) -> list[Reference] | None:
        raise ConnectionError("cache down")

    async def set(self, key: str, references: list[Reference], ttl: float) -> None:
        raise ConnectionError("cache down")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def lookup(session: aiohttp.ClientSession, cache: Any = None, **kwargs: Any) -> ReferenceLookup:
    return ReferenceLookup(
        SearxngSearch(session, "http://searx.test/"),
        cache if cache is not None else MemorySearchCache(),
        CircuitBreaker("reference_search", BreakerPolicy(failure_threshold=2, reset_timeout=60)),
        **kwargs,
    )


def hits(*names: str) -> dict[str, Any]:
    return {"results": [{"img_src": f"https://img.example.com/{n}.jpg", "title": n} for n in names]}


async def test_cached_results_expire_after_their_ttl(
    session: aiohttp.ClientSession, upstream: aioresponses
) -> None:
    """Within the TTL the cache answers; after it the provider is asked again."""
    clock = Clock()
    upstream.get(SEARX_SEARCH, payload=hits("a"))
    upstream.get(SEARX_SEARCH, payload=hits("b"))
    finder = lookup(session, MemorySearchCache(clock=clock), cache_ttl=100)
    first = await finder.find("Zendaya Met Gala look")
    clock.now = 99
    assert (await finder.find("zendaya  met gala LOOK")).cache_hit
    clock.now = 100
    again = await finder.find("Zendaya Met Gala look")
    assert not again.cache_hit
    assert [r.image_url for r in first.references + again.references] == [
        "https://img.example.com/a.jpg", "https://img.example.com/b.jpg",
    ]


async def test_empty_answers_are_kept_only_briefly(
    session: aiohttp.ClientSession, upstream: aioresponses
) -> None:
    """Nothing found is cached for five minutes, not the full day."""
    clock = Clock()
    upstream.get(SEARX_SEARCH, payload={"results": []}, repeat=True)
    finder = lookup(session, MemorySearchCache(clock=clock), cache_ttl=86400)
    await finder.find("nobody")
    clock.now = 299
    assert (await finder.find("nobody")).cache_hit
    clock.now = 300
    assert not (await finder.find("nobody")).cache_hit


async def test_a_broken_cache_costs_a_call_not_the_request(
    session: aiohttp.ClientSession, upstream: aioresponses
) -> None:
    """Cache errors are logged and the provider answers."""
    upstream.get(SEARX_SEARCH, payload=hits("a"))
    result = await lookup(session, BrokenCache()).find("Rihanna Met Gala gown")
    assert result.summary == "found 1"


async def test_cancellation_propagates_and_frees_the_half_open_trial(
    session: aiohttp.ClientSession, upstream: aioresponses
) -> None:
    """A client that goes away cancels the search; the breaker is not left waiting on it."""
    entered = asyncio.Event()

    async def hang(url: Any, **kwargs: Any) -> None:
        entered.set()
        await asyncio.sleep(30)

    upstream.get(SEARX_SEARCH, callback=hang)
    finder = lookup(session)
    task = asyncio.create_task(finder.find("Zendaya Met Gala look"))
    await asyncio.wait_for(entered.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await finder.breaker.state() is BreakerState.CLOSED and await finder.breaker.allow()


def test_cached_references_round_trip_as_bytes() -> None:
    """What a shared (Redis) cache would store decodes to the same references."""
    refs = [Reference(kind="search", image_url="https://img.example.com/a.jpg", title="a")]
    assert decode(encode(refs)) == refs


def test_the_provider_is_chosen_by_configuration() -> None:
    """SEARXNG_URL wins by default, a Brave key alone picks Brave, nothing set means no step."""
    assert Settings.from_env({}).search_provider() is None
    assert Settings.from_env({"SEARXNG_URL": "http://searx:8080"}).search_provider() == "searxng"
    assert Settings.from_env({"BRAVE_SEARCH_API_KEY": "k"}).search_provider() == "brave"
    both = {"SEARXNG_URL": "http://searx:8080", "BRAVE_SEARCH_API_KEY": "k"}
    assert Settings.from_env(both).search_provider() == "searxng"
    assert Settings.from_env(both | {"REFERENCE_SEARCH_PROVIDER": "brave"}).search_provider() == "brave"
    assert Settings.from_env(both | {"REFERENCE_SEARCH_PROVIDER": "none"}).search_provider() is None
    with pytest.raises(ConfigError, match="SEARXNG_URL"):
        Settings.from_env({"REFERENCE_SEARCH_PROVIDER": "searxng"})
    with pytest.raises(ConfigError, match="SEARXNG_URL"):
        Settings.from_env({"SEARXNG_URL": "searx:8080"})


class Link:
    """A RedisLink over the machine's Redis, with a key prefix of its own."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.prefix = f"gw-test-{uuid.uuid4().hex[:8]}:"
        self.available = True

    def failed(self, exc: BaseException) -> None:
        self.available = False


@needs_redis
async def test_redis_cache_round_trip_and_unreadable_entries() -> None:
    """What one instance stores another reads; an entry it cannot decode is a miss."""
    client = Redis.from_url("redis://127.0.0.1:6379/0")
    link = Link(client)
    cache = RedisSearchCache(link)
    refs = [Reference(kind="search", image_url="https://img.example.com/a.jpg", title="a")]
    try:
        await cache.set("k", refs, 60)
        assert await RedisSearchCache(link).get("k") == refs
        await client.set(link.prefix + "k", b"not json")
        assert await cache.get("k") is None
        assert await cache.get("missing") is None
    finally:
        for key in await client.keys(link.prefix + "*"):
            await client.delete(key)
        await client.aclose()


def test_titles_are_one_short_line_of_plain_text(session: aiohttp.ClientSession) -> None:
    """Control and bidi characters go, whitespace collapses, long titles are clipped."""
    finder = lookup(session)
    hits = [
        ImageHit(image_url="https://img.example.com/a.jpg", title="Zendaya\x00 at\n the \u202eMet\x9b Gala"),
        ImageHit(image_url="https://img.example.com/b.jpg", title="x" * 500),
        ImageHit(image_url="https://img.example.com/c.jpg", title=" \t "),
    ]
    titles = [ref.title for ref in finder.select(hits)]
    assert titles[0] == "Zendaya at the Met Gala"
    assert titles[1] is not None and len(titles[1]) == 200 and titles[1].endswith("\u2026")
    assert titles[2] is None


async def searxng_serving(aiohttp_server: Any, handler: Any) -> SearxngSearch:
    """The SearXNG client against a real local server answering /search with `handler`."""
    app = web.Application()
    app.router.add_get("/search", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    return SearxngSearch(aiohttp.ClientSession(), str(server.make_url("/")))


async def test_an_answer_that_arrives_in_two_parts_is_read_whole(aiohttp_server: Any) -> None:
    """A ~100 KB answer written in two parts 0.2 s apart decodes in full, not as a truncated body."""
    body = msgspec.json.encode(hits(*(f"look-{n}" for n in range(1500))))
    assert len(body) > 100_000

    async def in_two_parts(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await asyncio.sleep(0.2)
        await resp.write(body[len(body) // 2 :])
        return resp

    searxng = await searxng_serving(aiohttp_server, in_two_parts)
    async with searxng.session:
        found = await searxng.search("Zendaya Met Gala look", limit=2000)
    assert [hit.image_url for hit in found] == [f"https://img.example.com/look-{n}.jpg" for n in range(1500)]


async def test_an_answer_over_the_cap_is_refused_before_it_is_all_read(aiohttp_server: Any) -> None:
    """A body with no Content-Length that runs past the cap is refused once the cap is passed."""
    chunk = b" " * 65536
    total = 64 * 1024 * 1024  # 32 times the cap: more than socket buffers hold on the way
    sent = 0
    finished = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            while sent < total:
                await resp.write(chunk)
                sent += len(chunk)
        finally:
            finished.set()
        return resp

    searxng = await searxng_serving(aiohttp_server, endless)
    async with searxng.session:
        with pytest.raises(SearchFailed, match="too large"):
            await searxng.search("Zendaya Met Gala look", limit=10)
    await asyncio.wait_for(finished.wait(), 10)
    assert MAX_RESPONSE_BYTES < sent < total // 2
