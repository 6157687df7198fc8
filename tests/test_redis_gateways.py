"""Done-when for Redis: gateway processes sharing one redis-server (and a 3-node cluster)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import Settings
from gateway.redis import open_redis
from pipeline.limits import Limits
from pipeline.limits_redis import RedisRateLimiter
from tests.conftest import MakeClient
from tests.redis_servers import (
    REDIS_CLI,
    RedisClusterServers,
    RedisServer,
    assert_a_burst_waits_for_connections,
    free_port,
    needs_redis,
)

pytestmark = needs_redis

ROOT = Path(__file__).resolve().parent.parent
PROCESS = "/api/v1/enhanced/process"


class Gateway:
    """`python -m gateway serve` in its own process, on a free port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)],
            cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING", **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30.0) -> Gateway:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, "gateway exited"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_gateways(redis_url: str, count: int = 2) -> list[Gateway]:
    env = {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"gw-test-{os.urandom(4).hex()}:",
        "REDIS_HEALTH_INTERVAL": "0.1",
        # The 0.5 s default can pass on a loaded machine: a timed-out admission fails open and an
        # 11th request gets through. A stopped Redis refuses connections at once, so this costs nothing.
        "REDIS_TIMEOUT": "5",
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "10",
        "INTENT_CLASSIFIER": "rules",
    }
    gateways = [Gateway(env) for _ in range(count)]  # start together, wait together
    return [gateway.wait_ready() for gateway in gateways]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def gateways(redis_server: RedisServer) -> Iterator[list[Gateway]]:
    started = start_gateways(redis_server.url)
    yield started
    for gateway in started:
        gateway.stop()


async def post(session: aiohttp.ClientSession, gateway: Gateway, prompt: str, user: str) -> tuple[int, Any]:
    async with session.post(gateway.url + PROCESS, json={"prompt": prompt}, headers={"X-User-Id": user}) as r:
        return r.status, await r.json()


async def thirty_alternating(gateways: list[Gateway], user: str) -> list[int]:
    """30 requests at once, sent to the gateways in turn."""
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(
            *(post(session, gateways[i % len(gateways)], f"a red fox {i}", user) for i in range(30))
        )
    return [status for status, _ in answers]


async def test_two_processes_admit_exactly_ten_of_thirty(gateways: list[Gateway]) -> None:
    """Limit 10/min, 30 concurrent requests alternating between two processes: exactly 10 pass."""
    statuses = await thirty_alternating(gateways, "limit-user")
    assert (statuses.count(200), statuses.count(429)) == (10, 20)
    async with aiohttp.ClientSession() as session:
        for gateway in gateways:
            async with session.get(
                gateway.url + "/api/v1/enhanced/usage", headers={"X-User-Id": "limit-user"}
            ) as r:
                usage = await r.json()
            assert (usage["requests_last_minute"], usage["backend"]) == (10, "redis")


async def test_cached_through_one_is_a_hit_through_the_other(gateways: list[Gateway]) -> None:
    """A prompt classified by the first process is a cache hit on the second."""
    async with aiohttp.ClientSession() as session:
        first = await post(session, gateways[0], "paint my cat as a watercolor", "cache-user")
        second = await post(session, gateways[1], "paint my cat as a watercolor", "cache-user")
    assert (first[0], second[0]) == (200, 200)
    assert (first[1]["cache_hit"], second[1]["cache_hit"]) == (False, True)
    assert second[1]["workflow_type"] == first[1]["workflow_type"]


async def test_redis_stopped_mid_run_then_back(redis_server: RedisServer, gateways: list[Gateway]) -> None:
    """Redis gone: every request answers 200 and health is degraded; back: health ok, cache shared."""
    async with aiohttp.ClientSession() as session:
        redis_server.stop()
        for i in range(12):  # more than the limit: limits fail open
            status, body = await post(session, gateways[i % 2], f"outage prompt {i % 3}", "outage-user")
            assert status == 200
            assert body["success"] is True
        for gateway in gateways:
            async with session.get(gateway.url + "/health") as r:
                health = await r.json()
            assert r.status == 200
            assert health["status"] == "degraded"
            assert health["dependencies"]["redis"]["state"] == "degraded"

        redis_server.start()
        for gateway in gateways:
            deadline = time.monotonic() + 15
            while True:
                async with session.get(gateway.url + "/health") as r:
                    if (await r.json())["status"] == "ok":
                        break
                assert time.monotonic() < deadline, "gateway did not notice Redis coming back"
                await asyncio.sleep(0.05)
        first = await post(session, gateways[0], "after the outage", "outage-user")
        second = await post(session, gateways[1], "after the outage", "outage-user")
    assert (first[1]["cache_hit"], second[1]["cache_hit"]) == (False, True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    if REDIS_CLI is None:
        pytest.skip("redis-cli is not installed")
    servers = RedisClusterServers().start()
    yield servers
    servers.cleanup()


async def test_cluster_admits_exactly_ten_of_thirty(cluster: RedisClusterServers) -> None:
    """The same limit test on a 3-node Redis Cluster: the user's keys share one slot."""
    gateways = start_gateways(cluster.url)
    try:
        statuses = await thirty_alternating(gateways, "cluster-user")
        async with aiohttp.ClientSession() as session:
            first = await post(session, gateways[0], "a cluster fox", "cluster-other")
            second = await post(session, gateways[1], "a cluster fox", "cluster-other")
            async with session.get(gateways[0].url + "/health") as r:
                health = await r.json()
    finally:
        for gateway in gateways:
            gateway.stop()
    assert (statuses.count(200), statuses.count(429)) == (10, 20)
    assert (first[1]["cache_hit"], second[1]["cache_hit"]) == (False, True)
    assert health["dependencies"]["redis"] == {"state": "ok", "mode": "cluster"}


async def test_cluster_batch_of_many_users_is_split_by_slot_and_stays_exact(cluster: RedisClusterServers) -> None:
    """90 concurrent admissions for six users (slots on different nodes) against 10/min: each
    user gets exactly ten, though they went out together (one script call per slot)."""
    settings = Settings(redis_url=cluster.url, redis_key_prefix=f"batch-{os.urandom(4).hex()}:", redis_timeout=30.0)
    limits = Limits(requests_per_minute=10, requests_per_hour=100, cost_per_hour=0)
    users = [f"slot-user-{n}" for n in range(6)]
    async with open_redis(settings) as link:
        assert link is not None
        limiter = RedisRateLimiter(link, limits, fail_mode="closed")  # an error would raise, not admit
        decisions = await asyncio.gather(*(limiter.admit(users[n % 6]) for n in range(90)))
    admitted = Counter(users[n % 6] for n, decision in enumerate(decisions) if decision.allowed)
    assert admitted == {user: 10 for user in users}
    assert limiter.stats()["batches"] == 1


async def test_cluster_requests_beyond_the_connection_cap_wait_for_one(
    make_client: MakeClient, cluster: RedisClusterServers
) -> None:
    """As on one server (test_redis.py): a burst wanting more connections than a node allows
    queues for them; no request is refused and Redis is never taken for unreachable."""
    client = await make_client(redis_url=cluster.url, redis_key_prefix=f"cap-{os.urandom(4).hex()}:",
                               redis_max_connections=2, rate_limit_fail_mode="closed", redis_timeout=5.0)  # fmt: skip
    await assert_a_burst_waits_for_connections(client)
