"""The LLM path through the real app: fallbacks, breaker, /health, metrics (upstream mocked)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioresponses import aioresponses
from redis.asyncio import Redis
from yarl import URL

from tests.conftest import MakeClient
from tests.test_llm import BASE_URL, ENDPOINT, ERROR, answer, completion

LLM = {"openai_api_key": "sk-test", "openai_base_url": BASE_URL, "llm_backoff_base": 0.001}
REDIS_URL = "redis://127.0.0.1:6379/0"


def upstream_calls(upstream: aioresponses) -> int:
    return len(upstream.requests.get(("POST", URL(ENDPOINT)), []))


async def process(client: Any, prompt: str) -> dict[str, Any]:
    response = await client.post("/api/v1/enhanced/process", json={"prompt": prompt})
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_dead_upstream_costs_a_handful_of_calls(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """Upstream answering 500: 30 requests all get 200, the upstream sees only 5 calls."""
    upstream.post(ENDPOINT, status=500, payload=ERROR, repeat=True)
    client = await make_client(intent_classifier="llm", circuit_breaker_failure_threshold=5, **LLM)
    reasons = set()
    for _ in range(30):
        body = await process(client, "make my hair blonde with bangs")
        assert body["intent_source"] == "local"  # llm -> local -> rules
        assert body["workflow_type"] == "hair_styling"
        assert body["fallback_used"] is True
        reasons.add(body["metadata"]["fallback_reason"])
    assert upstream_calls(upstream) == 5  # 3 attempts, then 2 more open the circuit
    assert reasons == {"the llm classifier failed (status_500); the local classifier answered",
                       "the llm classifier failed (circuit_open); the local classifier answered"}  # fmt: skip

    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["dependencies"]["llm"]["state"] == "degraded"
    assert health["dependencies"]["llm"]["breaker"] == "open"
    metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
    llm = metrics["llm"]
    assert llm["calls"] == 5 and llm["retries"] == 3
    assert llm["fallbacks"] == 30 and llm["short_circuited"] == 28
    assert llm["failures_by_reason"] == {"status_500": 2, "circuit_open": 28}
    assert llm["breaker"]["state"] == "open"
    assert metrics["fallbacks"] == 30


async def test_cascade_pays_only_for_unsure_prompts(make_client: MakeClient, upstream: aioresponses) -> None:
    """Prompts the embedded classifier is sure of stay local; the rest go to the LLM (usage counted)."""
    upstream.post(ENDPOINT, payload=completion(answer("image_generation", 0.88)), repeat=True)
    client = await make_client(intent_classifier="cascade", **LLM)
    kept = await process(client, "make my hair blonde with bangs")
    escalated = await process(client, "surprise me")  # too vague: local confidence under 0.6
    assert kept["intent_source"] == "local" and kept["fallback_used"] is False
    assert escalated["intent_source"] == "llm" and escalated["fallback_used"] is False
    assert escalated["intent_confidence"] == 0.88
    assert upstream_calls(upstream) == 1

    metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
    # The embedded classifier ran for both, the LLM's answer included: its runs count both.
    assert sum(metrics["embedded_classifier_runs_by_tier"].values()) == 2
    llm = metrics["llm"]
    assert llm["calls"] == 1 and llm["answers"] == 1
    assert llm["tokens"] == {"prompt": 120, "completion": 30}
    assert llm["estimated_spend_usd"] > 0
    assert llm["cascade"]["kept_local_share"] == 0.5
    health = await (await client.get("/health")).json()
    assert health["dependencies"]["llm"]["state"] == "ok"
    prometheus = await (await client.get("/metrics")).text()
    assert "gateway_llm_calls_total 1" in prometheus
    assert "gateway_llm_breaker_state 0" in prometheus
    assert "gateway_llm_spend_usd_total" in prometheus
    assert 'gateway_llm_cascade_total{decision="kept_local"} 1' in prometheus


async def test_stream_reports_the_fallback(make_client: MakeClient, upstream: aioresponses) -> None:
    """On the stream too, the done event says the embedded classifier answered because the LLM failed."""
    upstream.post(ENDPOINT, status=400, payload=ERROR, repeat=True)
    client = await make_client(intent_classifier="llm", **LLM)
    response = await client.post("/api/v1/enhanced/stream", json={"prompt": "animate this sunset"})
    text = await response.text()
    assert response.status == 200
    assert '"fallback_used":true' in text and '"intent_source":"local"' in text
    assert upstream_calls(upstream) == 1  # a 400 is not retried


@pytest.fixture
async def shared() -> AsyncIterator[dict[str, Any]]:
    """LLM settings for gateways sharing the machine's Redis under a prefix of this test's own
    (its keys are removed after)."""
    prefix = f"gw-test-{secrets.token_hex(6)}:"
    yield {"redis_url": REDIS_URL, "redis_key_prefix": prefix, "circuit_breaker_failure_threshold": 3, **LLM}
    redis = Redis.from_url(REDIS_URL)
    if keys := [key async for key in redis.scan_iter(match=prefix + "*")]:
        await redis.delete(*keys)
    await redis.aclose()


async def test_breaker_is_shared_through_redis(
    make_client: MakeClient, upstream: aioresponses, shared: dict[str, Any]
) -> None:
    """Two instances on one Redis: once one opens the circuit, the other makes no calls."""
    upstream.post(ENDPOINT, status=500, payload=ERROR, repeat=True)
    first = await make_client(intent_classifier="llm", **shared)
    second = await make_client(intent_classifier="llm", **shared)
    await process(first, "a cat playing in the garden")
    assert upstream_calls(upstream) == 3
    body = await process(second, "a cat playing in the garden")
    assert body["fallback_used"] is True
    assert upstream_calls(upstream) == 3
    health = await (await second.get("/health")).json()
    assert health["dependencies"]["llm"]["breaker"] == "open"
    assert health["dependencies"]["llm"]["breaker_shared"] is True


async def test_a_breaker_shared_through_redis_is_its_upstreams(
    make_client: MakeClient, upstream: aioresponses, shared: dict[str, Any]
) -> None:
    """Two gateways on one Redis calling different upstreams: one's dead upstream opened the
    other's circuit too (one key for all), and its healthy upstream went unused."""
    other_base = "http://other-llm.test/v1"
    upstream.post(ENDPOINT, status=500, payload=ERROR, repeat=True)
    upstream.post(f"{other_base}/chat/completions", payload=completion(answer("image_generation")), repeat=True)
    dead = await make_client(intent_classifier="llm", **shared)
    healthy = await make_client(intent_classifier="llm", **{**shared, "openai_base_url": other_base})
    assert (await process(dead, "a cat playing in the garden"))["fallback_used"] is True
    assert (await (await dead.get("/health")).json())["dependencies"]["llm"]["breaker"] == "open"
    body = await process(healthy, "a cat playing in the garden")
    assert (body["fallback_used"], body["intent_source"]) == (False, "llm")


async def test_upstream_continues_the_request_trace(make_client: MakeClient, upstream: aioresponses) -> None:
    """The LLM call carries traceparent: the caller's trace id, and the classifier's CLIENT span
    as parent, so a trace from an LLM proxy joins the request's."""
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    upstream.post(ENDPOINT, payload=completion(answer("image_generation", 0.9)))
    client = await make_client(intent_classifier="llm", **LLM)
    response = await client.post(
        "/api/v1/enhanced/process",
        json={"prompt": "a lighthouse at dawn"},
        headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
    )
    assert response.status == 200

    (call,) = upstream.requests[("POST", URL(ENDPOINT))]
    version, sent_trace, sent_parent, flags = call.kwargs["headers"]["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
    spans = (await (await client.get(f"/debug/traces/{trace_id}")).json())["spans"]
    (llm_span,) = [span for span in spans if span["name"] == "chat gpt-4o-mini"]
    assert sent_parent == llm_span["span_id"] != caller_span
    assert llm_span["kind"] == "CLIENT"
