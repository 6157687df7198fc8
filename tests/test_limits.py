"""Per-user limits: sliding windows, 429 before any stream, cost budget, usage, Redis and memory."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.appkeys import LIMITER, REDIS
from pipeline.limits import Limits, MemoryRateLimiter, TokenSource
from pipeline.limits_redis import RedisRateLimiter
from tests.conftest import MakeClient, wait_until
from tests.redis_servers import RedisServer, free_port, needs_redis
from tests.sse import parse_events

PROCESS = "/api/v1/enhanced/process"
STREAM = "/api/v1/enhanced/stream"
USAGE = "/api/v1/enhanced/usage"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


def prefix() -> str:
    return f"gw-test-{os.urandom(4).hex()}:"


async def test_memory_windows_slide() -> None:
    """A request counts for exactly 60 s: the 4th of a 3/min limit waits for the 1st to age out."""
    clock = Clock()
    limiter = MemoryRateLimiter(
        Limits(requests_per_minute=3, requests_per_hour=0, cost_per_hour=0), clock=clock
    )
    for step in range(3):
        clock.now = 1000.0 + step * 10
        assert (await limiter.admit("u")).allowed
    clock.now = 1059.0
    refused = await limiter.admit("u")
    assert (refused.allowed, refused.kind) == (False, "minute")
    assert refused.reset_seconds == pytest.approx(1.0)
    clock.now = 1060.0
    assert (await limiter.admit("u")).allowed
    assert (await limiter.admit("someone-else")).allowed


async def test_memory_cost_budget() -> None:
    """Admitted while the hour's charges are under the budget; refused once they reach it."""
    clock = Clock()
    limiter = MemoryRateLimiter(
        Limits(requests_per_minute=0, requests_per_hour=0, cost_per_hour=0.1), clock=clock
    )
    first = await limiter.admit("u")
    await limiter.charge("u", first.token, 0.06)
    second = await limiter.admit("u")
    assert second.allowed and second.kind == "cost" and second.remaining == pytest.approx(0.04)
    await limiter.charge("u", second.token, 0.06)
    refused = await limiter.admit("u")
    assert (refused.allowed, refused.kind) == (False, "cost")
    clock.now += 3600
    assert (await limiter.admit("u")).allowed
    assert (await limiter.usage("u")).cost_last_hour == 0.0


async def test_admission_reports_the_tightest_limit() -> None:
    """The limit with the smallest share left after this request (which counts in the request
    windows, not yet in cost) is the one reported, with its remaining and reset time."""
    clock = Clock()
    limiter = MemoryRateLimiter(Limits(requests_per_minute=10, requests_per_hour=12, cost_per_hour=1.0),
                                clock=clock)
    first = await limiter.admit("u1")  # minute 9/10 left, hour 11/12: the minute is tighter
    assert (first.kind, first.remaining, first.reset_seconds) == ("minute", 9, 60.0)
    for _ in range(8):
        clock.now += 10  # spread over 80 s: the minute window forgets the first ones
        await limiter.admit("u1")
    hour = await limiter.admit("u1")  # 10th in the hour (2 of 12 left), 7th in the minute (3 of 10)
    assert (hour.kind, hour.remaining, hour.reset_seconds) == ("hour", 2, 3600 - 80)
    await limiter.charge("u1", hour.token, 0.95)
    cost = await limiter.admit("u1")  # $0.05 of $1 left: tighter than 1 of 12 requests
    assert cost.kind == "cost" and cost.remaining == pytest.approx(0.05)
    assert cost.reset_seconds == 3600.0
    last = await limiter.admit("u1")  # the 12th: nothing left in the hour after it
    assert last.allowed and (last.kind, last.remaining) == ("hour", 0)
    refused = await limiter.admit("u1")  # the hour is exhausted; the minute (9 of 10) is not
    assert not refused.allowed
    assert (refused.kind, refused.reset_seconds) == ("hour", 3600 - 80)


async def test_429_with_headers_before_the_stream(make_client: MakeClient) -> None:
    """Past the limit, /process and /stream answer 429 JSON with Retry-After and RateLimit-*."""
    client = await make_client(rate_limit_requests_per_minute=2)
    ok = await client.post(PROCESS, json={"prompt": "a red fox"}, headers={"X-User-Id": "ann"})
    assert ok.status == 200
    assert (ok.headers["RateLimit-Limit"], ok.headers["RateLimit-Remaining"]) == ("2", "1")
    assert ok.headers["RateLimit-Policy"] == "2;w=60"  # which limit: 2 a minute
    assert (await client.post(STREAM, json={"prompt": "a fox"}, headers={"X-User-Id": "ann"})).status == 200
    for path in (PROCESS, STREAM):
        refused = await client.post(path, json={"prompt": "a red fox"}, headers={"X-User-Id": "ann"})
        assert refused.status == 429
        assert refused.content_type == "application/json"
        assert (await refused.json())["error"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Limit"] == "2"
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert 1 <= int(refused.headers["RateLimit-Reset"]) <= 60
    other = await client.post(PROCESS, json={"prompt": "a red fox"}, headers={"X-User-Id": "bob"})
    assert other.status == 200
    assert (await client.get("/health")).status == 200  # never limited
    stats = client.app[LIMITER].stats()
    assert stats["refused_by_kind"] == {"minute": 2}


async def test_usage_reports_counts_and_limits(make_client: MakeClient) -> None:
    """GET /usage: the caller's requests and estimated spend in the windows, and the limits."""
    client = await make_client(rate_limit_requests_per_minute=5, cost_limit_per_hour=2.0)
    result = await (
        await client.post(PROCESS, json={"prompt": "a red fox"}, headers={"X-User-Id": "ann"})
    ).json()
    usage = await (await client.get(USAGE, headers={"X-User-Id": "ann"})).json()
    assert usage["user_id"] == "ann"
    assert (usage["requests_last_minute"], usage["requests_last_hour"]) == (1, 1)
    assert usage["cost_last_hour"] == pytest.approx(result["estimated_cost"])
    assert usage["limits"] == {"requests_per_minute": 5, "requests_per_hour": 1000, "cost_per_hour": 2.0}
    assert usage["backend"] == "memory"


async def test_compare_is_one_request_and_one_charge(make_client: MakeClient) -> None:
    """/compare runs two pipelines but counts and charges as one request (the AI arm)."""
    client = await make_client()
    body = await (await client.post("/api/v1/enhanced/compare", json={"prompt": "a red fox"})).json()
    usage = await (await client.get(USAGE)).json()
    assert usage["requests_last_minute"] == 1
    assert usage["cost_last_hour"] == pytest.approx(body["ai_classification"]["estimated_cost"])


async def test_a_refusal_by_the_cost_limit_says_its_headers_count_cents(make_client: MakeClient) -> None:
    client = await make_client(cost_limit_per_hour=0.01)
    assert (await client.post(PROCESS, json={"prompt": "a red fox"})).status == 200  # then over budget
    refused = await client.post(PROCESS, json={"prompt": "a red fox"})
    assert refused.status == 429
    assert refused.headers["RateLimit-Policy"] == '1;w=3600;comment="US cents of estimated cost"'
    assert refused.headers["RateLimit-Limit"] == "1"


async def test_a_workflow_missing_its_image_is_not_charged_until_sent_with_one(make_client: MakeClient) -> None:
    """The frontend asks for the image and sends the request again: charged once, not twice."""
    client = await make_client()
    missing = await (await client.post(PROCESS, json={"prompt": "animate this photo"})).json()
    assert missing["metadata"]["image_missing"] is True and missing["estimated_cost"] > 0
    assert (await (await client.get(USAGE)).json())["cost_last_hour"] == 0.0
    body = {"prompt": "animate this photo", "working_image_url": "https://demo.supabase.co/storage/v1/x.jpg"}
    sent = await (await client.post(PROCESS, json=body)).json()
    assert sent["metadata"]["image_missing"] is False
    assert (await (await client.get(USAGE)).json())["cost_last_hour"] == pytest.approx(sent["estimated_cost"])


async def test_the_intent_event_says_an_image_is_missing_before_the_result(make_client: MakeClient) -> None:
    """The frontend can ask for the image as soon as the workflow is known; a @mention may bring one."""
    client = await make_client()
    for prompt, missing in (("animate this photo", True), ("animate @sarah dancing", False), ("a red fox", False)):
        events = parse_events(await (await client.post(STREAM, json={"prompt": prompt})).read())
        intent = next(e for e in events if e.event == "intent").data
        assert intent["image_missing"] is missing, prompt


@needs_redis
async def test_cost_limit_on_redis(make_client: MakeClient, redis_server: RedisServer) -> None:
    """The estimated cost is charged with the result; a spent budget refuses with kind cost."""
    client = await make_client(
        redis_url=redis_server.url, redis_key_prefix=prefix(), cost_limit_per_hour=0.05
    )
    first = await (await client.post(PROCESS, json={"prompt": "a red fox"})).json()
    assert first["estimated_cost"] > 0
    statuses = []
    for _ in range(int(0.05 / first["estimated_cost"]) + 2):
        statuses.append((await client.post(PROCESS, json={"prompt": "a red fox"})).status)
    assert statuses[-1] == 429
    usage = await (await client.get(USAGE)).json()
    assert usage["backend"] == "redis"
    assert usage["cost_last_hour"] >= 0.05
    assert usage["cost_last_hour"] == pytest.approx(first["estimated_cost"] * (1 + statuses.count(200)))
    assert client.app[LIMITER].stats()["refused_by_kind"] == {"cost": statuses.count(429)}


@needs_redis
async def test_a_streams_estimate_is_in_the_ledger_when_the_stream_ends(
    make_client: MakeClient, redis_server: RedisServer
) -> None:
    """A stream's estimate is in the user's ledger when the stream has ended."""
    client = await make_client(redis_url=redis_server.url, redis_key_prefix=prefix(), cost_limit_per_hour=2.0)
    ann = {"X-User-Id": "ann"}
    for expected_total in (1, 2):
        events = parse_events(await (await client.post(STREAM, json={"prompt": "a red fox"}, headers=ann)).read())
        assert [e.event for e in events] == ["context", "intent", "model", "prompt", "done"]
        usage = await (await client.get(USAGE, headers=ann)).json()
        assert usage["cost_last_hour"] == pytest.approx(events[-1].data["estimated_cost"] * expected_total)


@needs_redis
async def test_redis_limit_is_exact_under_concurrency(redis_server: RedisServer) -> None:
    """50 concurrent admissions through two clients against 10/min: exactly 10 admitted."""
    from gateway.config import Settings
    from gateway.redis import open_redis

    # A generous command timeout: on a loaded machine one of 50 concurrent scripts can pass the 0.5 s
    # default and fail open, admitting an 11th; the timeout is not what this test is about.
    settings = Settings(redis_url=redis_server.url, redis_key_prefix=prefix(), redis_timeout=30.0)
    limits = Limits(requests_per_minute=10, requests_per_hour=100, cost_per_hour=0)
    async with open_redis(settings) as one, open_redis(settings) as two:
        assert one is not None and two is not None
        limiters = [RedisRateLimiter(link, limits, fail_mode="open") for link in (one, two)]
        decisions = await asyncio.gather(*(limiters[i % 2].admit("ann") for i in range(50)))
        usage = await limiters[0].usage("ann")
    assert sum(d.allowed for d in decisions) == 10
    assert (usage.requests_last_minute, usage.requests_last_hour) == (10, 10)
    # Each limiter's 25 concurrent admissions went out together, not one script call each.
    stats = limiters[0].stats()
    assert stats["batched_operations"] == 26 and stats["batches"] <= 3


@needs_redis
async def test_redis_down_fails_open_by_default(make_client: MakeClient, redis_server: RedisServer) -> None:
    """With Redis stopped, limited routes still answer 200 and usage says counts are unknown."""
    client: Any = await make_client(
        redis_url=redis_server.url, redis_key_prefix=prefix(), rate_limit_requests_per_minute=1
    )
    redis_server.stop()
    for _ in range(3):
        assert (await client.post(PROCESS, json={"prompt": "a red fox"})).status == 200
    usage = await (await client.get(USAGE)).json()
    assert (usage["backend"], usage["requests_last_minute"]) == ("unavailable", None)
    assert client.app[LIMITER].stats()["failed_open"] == 3


@needs_redis
async def test_redis_down_fails_closed_when_asked(make_client: MakeClient, redis_server: RedisServer) -> None:
    """RATE_LIMIT_FAIL_MODE=closed: with Redis stopped, limited routes answer 503, and so does
    /health (it said 200 "serving from memory" while the instance refused every request, so a
    load balancer kept sending them); with Redis back, both serve again."""
    client = await make_client(redis_url=redis_server.url, rate_limit_fail_mode="closed", redis_health_interval=0.1)
    assert (await client.get("/health")).status == 200
    redis_server.stop()
    refused = await client.post(STREAM, json={"prompt": "a red fox"})
    assert refused.status == 503
    assert (await refused.json())["error"] == "rate_limit_unavailable"
    assert refused.headers["Retry-After"] == "1"
    health = await client.get("/health")
    body = await health.json()
    assert (health.status, body["status"], body["dependencies"]["rate_limits"]["requests"]) == (
        503, "unavailable", "refused")
    redis_server.start()
    await wait_until(lambda: client.app[REDIS] is not None and client.app[REDIS].available, timeout=10)
    assert (await client.get("/health")).status == 200
    assert (await client.post(STREAM, json={"prompt": "a red fox"})).status == 200


async def test_refusals_and_cache_lookups_in_metrics(make_client: MakeClient) -> None:
    """Prometheus and JSON metrics count refusals by limit kind and cache hits/misses."""
    client = await make_client(rate_limit_requests_per_minute=1)
    for _ in range(2):
        await client.post(PROCESS, json={"prompt": "a red fox"})
    await client.post(PROCESS, json={"prompt": "a red fox"}, headers={"X-User-Id": "bob"})
    text = await (await client.get("/metrics")).text()
    assert 'gateway_rate_limited_total{kind="minute"} 1' in text
    assert 'gateway_cache_lookups_total{result="hit"} 1' in text
    assert 'gateway_cache_lookups_total{result="miss"} 1' in text
    snapshot = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert snapshot["rate_limits"]["refused_by_kind"] == {"minute": 1}
    assert (snapshot["intent_cache"]["hits"], snapshot["intent_cache"]["misses"]) == (1, 1)


@needs_redis
async def test_redis_cost_ledger_forgets_charges_older_than_an_hour(redis_server: RedisServer) -> None:
    """The script subtracts charges that left the hour window from the running total."""
    from gateway.config import Settings
    from gateway.redis import open_redis

    settings = Settings(redis_url=redis_server.url, redis_key_prefix=prefix())
    async with open_redis(settings) as link:
        assert link is not None
        limiter = RedisRateLimiter(
            link, Limits(requests_per_minute=0, requests_per_hour=0, cost_per_hour=1.0), fail_mode="open"
        )
        _, _, cost_log, spent = limiter.keys("ann")
        seconds, micros = await link.client.time()
        now_ms = seconds * 1000 + micros // 1000
        await link.client.zadd(cost_log, {"old-token:900000": now_ms - 3_600_001})
        await link.client.set(spent, 900000)
        await limiter.charge("ann", "new-token", 0.25)
        await limiter.charge("ann", "new-token", 0.25)  # a retried charge counts once
        decision = await limiter.admit("ann")
        usage = await limiter.usage("ann")
        assert await link.client.zcard(cost_log) == 1
    assert decision.allowed and decision.remaining == pytest.approx(0.75)
    assert usage.cost_last_hour == pytest.approx(0.25)


@needs_redis
async def test_one_script_call_for_interleaved_users_keeps_their_windows_apart(redis_server: RedisServer) -> None:
    """Admissions, then charges, of three users interleaved in one batch each: every operation
    reaches its own user's keys."""
    from gateway.config import Settings
    from gateway.redis import open_redis

    settings = Settings(redis_url=redis_server.url, redis_key_prefix=prefix())
    users = ["ann", "bob", "cy"]
    async with open_redis(settings) as link:
        assert link is not None
        limiter = RedisRateLimiter(
            link, Limits(requests_per_minute=10, requests_per_hour=100, cost_per_hour=100.0), fail_mode="closed"
        )
        decisions = await asyncio.gather(*(limiter.admit(users[n % 3]) for n in range(45)))
        admitted = [(users[n % 3], d.token) for n, d in enumerate(decisions) if d.allowed]
        await asyncio.gather(*(limiter.charge(user, token, 0.25 * (1 + users.index(user)))
                               for user, token in admitted))
        usages = [await limiter.usage(user) for user in users]
    assert Counter(user for user, _ in admitted) == {user: 10 for user in users}
    assert [(u.requests_last_minute, u.cost_last_hour) for u in usages] == [(10, 2.5), (10, 5.0), (10, 7.5)]
    assert limiter.stats()["batches"] == 2 + 3  # admissions, charges, then one usage read each


@needs_redis
async def test_redis_ledger_totals_stay_exact_in_the_hundreds_of_millions(redis_server: RedisServer) -> None:
    """Totals of 15+ digits in micro-dollars come back digit for digit (Lua's tostring would
    write 5e+14)."""
    from gateway.config import Settings
    from gateway.redis import open_redis

    settings = Settings(redis_url=redis_server.url, redis_key_prefix=prefix())
    async with open_redis(settings) as link:
        assert link is not None
        limiter = RedisRateLimiter(
            link, Limits(requests_per_minute=0, requests_per_hour=0, cost_per_hour=1e9), fail_mode="open"
        )
        await limiter.charge("ann", "big", 500_000_000.000001)
        usage = await limiter.usage("ann")
        decision = await limiter.admit("ann")
    assert usage.cost_last_hour == 500_000_000.000001
    assert decision.allowed and decision.remaining == 1e9 - 500_000_000.000001


async def test_hung_redis_costs_a_timeout_not_a_request(make_client: MakeClient) -> None:
    """A Redis that accepts connections and never answers: requests still 200, health degraded."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await make_client(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.2)
        for _ in range(3):
            assert (await client.post(PROCESS, json={"prompt": "a red fox"})).status == 200
        health = await (await client.get("/health")).json()
        assert health["status"] == "degraded"
        assert "Timeout" in health["dependencies"]["redis"]["error"]
        assert client.app[LIMITER].stats()["failed_open"] == 3
        metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
        assert metrics["redis"]["available"] is False and metrics["redis"]["failures"] >= 1
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_hung_redis_costs_queued_admissions_one_timeout() -> None:
    """Admissions queued behind a call that times out fail open at once, not one timeout per batch."""
    from gateway.config import Settings
    from gateway.redis import open_redis

    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.2)
    limits = Limits(requests_per_minute=10, requests_per_hour=100, cost_per_hour=0)
    try:
        async with open_redis(settings) as link:
            assert link is not None
            link.available = True  # as if Redis had answered until a moment ago
            limiter = RedisRateLimiter(link, limits, fail_mode="open")
            first = asyncio.create_task(limiter.admit("ann"))
            await asyncio.sleep(0.01)  # on its way, and hanging
            started = asyncio.get_running_loop().time()
            decisions = await asyncio.gather(first, *(limiter.admit("ann") for _ in range(450)))
            waited = asyncio.get_running_loop().time() - started
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert all(d.allowed for d in decisions) and limiter.stats()["failed_open"] == 451
    assert waited < 0.4  # one timeout (0.2 s), not one per batch of 100
    assert "Timeout" in (link.last_error or "")  # the real cause, not the skipped batches


async def test_unreachable_cluster_fails_open(make_client: MakeClient) -> None:
    """A cluster with no node answering raises RedisClusterException (not a RedisError): still 200."""
    client = await make_client(redis_url=f"redis+cluster://127.0.0.1:{free_port()}", redis_timeout=0.2)
    for _ in range(2):
        assert (await client.post(PROCESS, json={"prompt": "a red fox"})).status == 200
    assert client.app[LIMITER].stats()["failed_open"] == 2


def test_admission_tokens_never_repeat_within_or_across_limiters() -> None:
    """Tokens are shared Redis set members: two instances' tokens must not collide."""
    first, second = TokenSource(), TokenSource()
    tokens = [first() for _ in range(1000)] + [second() for _ in range(1000)]
    assert len(set(tokens)) == len(tokens)
