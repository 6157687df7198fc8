"""Reference search through the gateway: providers mocked with aioresponses, nothing else."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.appkeys import REDIS, REFERENCE_LOOKUP, REFERENCES, TRACING
from tests.conftest import MakeClient
from tests.redis_servers import free_port, needs_redis
from tests.sse import parse_events

STREAM = "/api/v1/enhanced/stream"
PROCESS = "/api/v1/enhanced/process"
SEARX = "http://searx.test:8080"
SEARX_SEARCH = re.compile(r"^http://searx\.test:8080/search\?.*$")
BRAVE_SEARCH = re.compile(r"^https://api\.search\.brave\.com/res/v1/images/search\?.*$")
LOOK = "make me look like Zendaya at the Met Gala"


def searx_result(n: int, **overrides: Any) -> dict[str, Any]:
    result = {
        "img_src": f"https://images.example.com/zendaya-{n}.jpg",
        "title": f"Zendaya Met Gala {n}",
        "url": f"https://news.example.com/story-{n}",
        "engine": "bing images",
    }
    return result | overrides


def provider_calls(upstream: aioresponses) -> list[URL]:
    return [url for (method, url) in upstream.requests if url.host != "127.0.0.1"]


async def stream(client: Any, prompt: str, **body: Any) -> dict[str, Any]:
    """The stream's events by name (the `references` event and `done`)."""
    resp = await client.post(STREAM, json={"prompt": prompt, **body})
    assert resp.status == 200
    events = parse_events(await resp.read())
    return {"names": [e.event for e in events], **{e.event: e.data for e in events}}


async def test_results_are_attached_in_order_after_the_users_tags(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """The provider's order is kept, capped at REFERENCE_SEARCH_RESULTS, after the @tag reference."""
    results = [searx_result(n) for n in range(1, 7)]
    results.insert(2, {"title": "no image here", "url": "https://news.example.com/x"})
    upstream.get(SEARX_SEARCH, payload={"results": results})
    client = await make_client(searxng_url=SEARX, reference_search_results=4)
    await client.app[REFERENCES].save("anonymous", "sarah", "https://a.supabase.co/sarah.jpg")

    got = await stream(client, "put @sarah in Zendaya's Met Gala look")

    assert got["names"] == ["context", "intent", "model", "prompt", "references", "done"]
    event = got["references"]
    assert (event["outcome"], event["summary"], event["count"]) == ("found", "found 4", 4)
    assert event["query"] == "Zendaya Met Gala look" and event["provider"] == "searxng"
    assert got["intent"]["web_search_query"] == event["query"]  # what the frontend shows is what is searched
    refs = got["done"]["references"]
    assert refs[0] == {
        "kind": "user_tag", "tag": "sarah", "image_url": "https://a.supabase.co/sarah.jpg",
        "title": None, "source_url": None,
    }
    assert [r["image_url"] for r in refs[1:]] == [
        f"https://images.example.com/zendaya-{n}.jpg" for n in range(1, 5)
    ]
    assert refs[1] == {
        "kind": "search", "tag": None, "image_url": "https://images.example.com/zendaya-1.jpg",
        "title": "Zendaya Met Gala 1", "source_url": "https://news.example.com/story-1",
    }
    assert event["references"] == refs[1:]
    [call] = provider_calls(upstream)
    assert call.path == "/search"
    assert dict(call.query) == {"q": "Zendaya Met Gala look", "format": "json", "categories": "images",
                                "safesearch": "1"}


async def test_empty_results_are_found_zero(make_client: MakeClient, upstream: aioresponses) -> None:
    """A provider with nothing to show: `found 0`, no references, the request succeeds."""
    upstream.get(SEARX_SEARCH, payload={"query": "x", "results": []})
    client = await make_client(searxng_url=SEARX)
    got = await stream(client, LOOK)
    assert got["references"]["summary"] == "found 0"
    assert got["done"]["references"] == [] and got["done"]["success"] is True
    assert got["done"]["fallback_used"] is False


async def test_timeout_is_reported_as_failed_and_the_request_goes_on(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """A provider that times out gives `failed` with the reason; the answer is still complete."""
    upstream.get(SEARX_SEARCH, exception=TimeoutError())
    client = await make_client(searxng_url=SEARX)
    got = await stream(client, LOOK)
    assert got["names"] == ["context", "intent", "model", "prompt", "references", "done"]
    assert got["references"]["summary"] == "failed"
    assert "timed out" in got["references"]["reason"]
    assert got["done"]["workflow_type"] == "reference_styling"
    assert got["done"]["fallback_used"] is False and got["done"]["references"] == []


async def test_a_real_slow_provider_is_cut_off_by_the_timeout(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """The provider's own deadline applies: a hanging upstream ends as `failed`, not a hung stream."""

    async def hang(url: URL, **kwargs: Any) -> None:
        await asyncio.sleep(30)

    upstream.get(SEARX_SEARCH, callback=hang)
    client = await make_client(searxng_url=SEARX, reference_search_timeout=0.05)
    got = await stream(client, LOOK)
    assert got["references"]["outcome"] == "failed"
    assert "timed out" in got["references"]["reason"]


async def test_server_errors_open_the_breaker(make_client: MakeClient, upstream: aioresponses) -> None:
    """After the threshold of 500s the provider is not called any more, and /health says degraded."""
    upstream.get(SEARX_SEARCH, status=500, body="oops", repeat=True)
    client = await make_client(searxng_url=SEARX, circuit_breaker_failure_threshold=2)
    for _ in range(2):
        got = await stream(client, LOOK)
        assert got["references"]["outcome"] == "failed"
        assert "HTTP 500" in got["references"]["reason"]
    [call] = provider_calls(upstream)
    assert len(upstream.requests[("GET", call)]) == 2

    got = await stream(client, LOOK)
    assert got["references"]["outcome"] == "failed"
    assert got["references"]["reason"] == "circuit open"
    assert len(upstream.requests[("GET", call)]) == 2  # no third call
    assert got["done"]["success"] is True

    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["dependencies"]["reference_search"]["breaker"]["state"] == "open"


async def test_unsafe_result_urls_are_dropped(make_client: MakeClient, upstream: aioresponses) -> None:
    """Private, loopback, metadata, odd-scheme and credentialed image URLs never reach the result."""
    unsafe = [
        "http://127.0.0.1/a.jpg", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/a.png",
        "http://localhost/a.png", "http://2130706433/a.png", "http://0x7f.1/a.png", "https://[::1]/a.png",
        "http://[::ffff:192.168.0.1]/a.png", "file:///etc/passwd", "javascript:alert(1)",
        "https://user:pw@images.example.com/a.jpg", "ftp://images.example.com/a.jpg",
        "http://printer.local/a.jpg", "http://intranet/a.jpg",
        # Hosts a browser or yarl reads as 127.0.0.1 or the metadata address.
        "http://127\u30020.0.1/a.jpg", "http://%31%32%37.0.0.1/a.jpg", "http://169.254.169.254\u3002/latest/meta-data/",
    ]
    results = [searx_result(0, img_src=url) for url in unsafe]
    results.append(searx_result(1))
    results.append(searx_result(2, url="http://192.168.1.1/admin"))  # safe image, unsafe page
    upstream.get(SEARX_SEARCH, payload={"results": results})
    client = await make_client(searxng_url=SEARX)
    got = await stream(client, LOOK)
    refs = got["done"]["references"]
    assert [r["image_url"] for r in refs] == [
        "https://images.example.com/zendaya-1.jpg", "https://images.example.com/zendaya-2.jpg",
    ]
    assert refs[1]["source_url"] is None
    assert got["references"]["summary"] == "found 2"


async def test_second_identical_request_is_a_cache_hit(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """The same look asked twice costs one provider call; the second says cache_hit."""
    upstream.get(SEARX_SEARCH, payload={"results": [searx_result(1), searx_result(2)]})  # answers once
    client = await make_client(searxng_url=SEARX)
    first = await stream(client, LOOK)
    second = await stream(client, "Make me look like ZENDAYA at the met gala")
    assert first["references"]["cache_hit"] is False
    assert second["references"]["cache_hit"] is True
    assert second["references"]["summary"] == "found 2"
    assert second["done"]["references"] == first["done"]["references"]
    [call] = provider_calls(upstream)
    assert len(upstream.requests[("GET", call)]) == 1


async def test_prompts_that_need_no_search_are_skipped(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """Other workflows, and try-ons naming nobody, say `skipped` with a reason and call nothing."""
    client = await make_client(searxng_url=SEARX)
    hair = await stream(client, "change my hair to blonde with bangs")
    assert hair["references"]["summary"] == "skipped"
    assert hair["references"]["reason"] == "not a reference_styling request"
    try_on = await stream(client, "try on this red dress", working_image_url="https://a.supabase.co/me.jpg")
    assert try_on["intent"]["workflow_type"] == "reference_styling"
    assert try_on["references"]["summary"] == "skipped"
    assert try_on["references"]["reason"] == "no person, event or look named"
    assert provider_calls(upstream) == []


async def test_process_json_carries_the_search_references(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """/process attaches the same references as the stream's done event."""
    upstream.get(SEARX_SEARCH, payload={"results": [searx_result(1)]})
    client = await make_client(searxng_url=SEARX)
    body = await (await client.post(PROCESS, json={"prompt": LOOK})).json()
    assert [r["kind"] for r in body["references"]] == ["search"]
    assert body["metadata"]["requires_web_search"] is True


async def test_brave_provider_sends_the_key_and_reads_full_size_images(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """With only BRAVE_SEARCH_API_KEY set, Brave answers; the image is properties.url, in order."""
    results = [
        {"type": "image_result", "title": f"Taylor {n}", "url": f"https://mag.example.com/{n}",
         "thumbnail": {"src": f"https://imgs.search.brave.com/{n}"},
         "properties": {"url": f"https://cdn.example.com/taylor-{n}.jpg"}}
        for n in (1, 2, 3)
    ]
    upstream.get(BRAVE_SEARCH, payload={"type": "images", "results": results})
    client = await make_client(brave_search_api_key="brave-key")
    got = await stream(client, "make me look like Taylor Swift at the Grammys")
    assert got["references"]["provider"] == "brave"
    assert got["references"]["query"] == "Taylor Swift Grammys look"
    assert [r["image_url"] for r in got["done"]["references"]] == [
        f"https://cdn.example.com/taylor-{n}.jpg" for n in (1, 2, 3)
    ]
    [call] = provider_calls(upstream)
    [request] = upstream.requests[("GET", call)]
    assert request.kwargs["headers"]["X-Subscription-Token"] == "brave-key"
    assert call.query["q"] == "Taylor Swift Grammys look"


async def test_a_malformed_provider_body_is_a_failure(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """A body that is not the provider's JSON shape is `failed`, not a stage error."""
    upstream.get(SEARX_SEARCH, body="<html>not json</html>")
    client = await make_client(searxng_url=SEARX)
    got = await stream(client, LOOK)
    assert got["references"]["outcome"] == "failed"
    assert "error" not in got["names"]


async def test_without_a_provider_the_gateway_behaves_as_before(client: Any, upstream: aioresponses) -> None:
    """No provider configured: no references step, no health entry, no outgoing request."""
    got = await stream(client, LOOK)
    assert got["names"] == ["context", "intent", "model", "prompt", "done"]
    assert got["done"]["references"] == []
    assert got["done"]["metadata"]["web_search_query"] == "Zendaya Met Gala look"
    assert REFERENCE_LOOKUP not in client.app
    health = await (await client.get("/health")).json()
    assert "reference_search" not in health["dependencies"]
    assert provider_calls(upstream) == []


@needs_redis
async def test_with_redis_the_cache_is_shared_between_instances(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """Two gateways on one Redis: the second finds the first one's search results cached."""
    prefix = f"gw-test-{uuid.uuid4().hex[:8]}:"
    settings = {"searxng_url": SEARX, "redis_url": "redis://127.0.0.1:6379/0", "redis_key_prefix": prefix}
    upstream.get(SEARX_SEARCH, payload={"results": [searx_result(1)]})  # answers once
    first_gateway = await make_client(**settings)
    second_gateway = await make_client(**settings)
    try:
        first = await stream(first_gateway, LOOK)
        second = await stream(second_gateway, LOOK)
        assert (first["references"]["cache_hit"], second["references"]["cache_hit"]) == (False, True)
        assert second["done"]["references"] == first["done"]["references"]
        redis = first_gateway.app[REDIS]
        assert redis is not None
        [key] = await redis.client.keys(prefix + "refsearch:*")
        assert 0 < await redis.client.ttl(key) <= 86400
    finally:
        redis = first_gateway.app[REDIS]
        assert redis is not None
        for key in await redis.client.keys(prefix + "*"):
            await redis.client.delete(key)


async def test_with_redis_the_breaker_is_shared_between_instances(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """Once one gateway opens the circuit, the other calls the failing provider no more."""
    prefix = f"gw-test-{uuid.uuid4().hex[:8]}:"
    settings = {
        "searxng_url": SEARX, "redis_url": "redis://127.0.0.1:6379/0", "redis_key_prefix": prefix,
        "circuit_breaker_failure_threshold": 2,
    }
    upstream.get(SEARX_SEARCH, status=500, body="oops", repeat=True)
    first_gateway = await make_client(**settings)
    second_gateway = await make_client(**settings)
    try:
        for _ in range(2):
            assert (await stream(first_gateway, LOOK))["references"]["outcome"] == "failed"
        [call] = provider_calls(upstream)
        got = await stream(second_gateway, LOOK)
        assert got["references"]["reason"] == "circuit open"
        assert len(upstream.requests[("GET", call)]) == 2  # the second gateway made no call
    finally:
        redis = first_gateway.app[REDIS]
        assert redis is not None
        for key in await redis.client.keys(prefix + "*"):
            await redis.client.delete(key)


async def test_with_redis_unreachable_the_cache_lives_in_memory(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """REDIS_URL set but nothing listening: searches still work and still cache, per instance."""
    upstream.get(SEARX_SEARCH, payload={"results": [searx_result(1)]})  # answers once
    client = await make_client(
        searxng_url=SEARX, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2
    )
    first = await stream(client, LOOK)
    second = await stream(client, LOOK)
    assert first["references"]["summary"] == second["references"]["summary"] == "found 1"
    assert second["references"]["cache_hit"] is True


async def test_the_step_is_traced_and_counted(make_client: MakeClient, upstream: aioresponses) -> None:
    """The references span carries the outcome; /metrics counts lookups and shows the circuit."""
    upstream.get(SEARX_SEARCH, payload={"results": [searx_result(1), searx_result(2)]})
    client = await make_client(searxng_url=SEARX)
    exporter = InMemorySpanExporter()
    client.server.app[TRACING].add_span_processor(SimpleSpanProcessor(exporter))
    await stream(client, LOOK)
    await stream(client, LOOK)
    spans = [s for s in exporter.get_finished_spans() if s.name == "stage.references"]
    assert [(s.attributes or {}).get("reference_search") for s in spans] == ["found 2", "found 2"]
    assert (spans[0].attributes or {}).get("references") == 2

    text = await (await client.get("/metrics")).text()
    parsed = {family.name: family for family in text_string_to_metric_families(text)}
    lookups = {s.labels["outcome"]: s.value for s in parsed["gateway_reference_search_lookups"].samples}
    assert lookups == {"found": 1, "cache_hit": 1}
    [circuit] = parsed["gateway_reference_search_circuit_open"].samples
    assert circuit.value == 0


async def test_a_stream_left_while_its_references_are_searched_is_charged(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """The prompt event carries the answer; a slow search holds `done` back. Charged at `done`,
    a client that closed the stream once the final prompt came got it for free."""

    async def slow(url: URL, **kwargs: Any) -> CallbackResult:
        await asyncio.sleep(10)
        return CallbackResult(payload={"results": []})

    upstream.get(SEARX_SEARCH, callback=slow)
    client = await make_client(searxng_url=SEARX, reference_search_timeout=20.0)
    body = {"prompt": LOOK, "working_image_url": "https://demo.supabase.co/storage/v1/me.jpg"}
    resp = await client.post(STREAM, json=body)
    seen = b""
    while b"event: prompt" not in seen:
        seen += await resp.content.readuntil(b"\n\n")
    resp.close()  # before the references, and `done`
    model = next(e for e in parse_events(seen) if e.event == "model").data
    usage = await (await client.get("/api/v1/enhanced/usage")).json()
    assert model["estimated_cost"] > 0 and usage["cost_last_hour"] == pytest.approx(model["estimated_cost"])
