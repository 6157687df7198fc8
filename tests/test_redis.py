"""The shared Redis connection: health, outage and reconnection against a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.appkeys import REDIS
from gateway.redis import parse_url
from tests.conftest import MakeClient, wait_until
from tests.redis_servers import RedisServer, assert_a_burst_waits_for_connections, needs_redis

pytestmark = needs_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


def test_cluster_urls() -> None:
    """redis+cluster:// and the flag select the cluster client; plain URLs stay standalone."""
    assert parse_url("redis+cluster://h:7000", False) == ("redis://h:7000", True)
    assert parse_url("rediss+cluster://h:7000", False) == ("rediss://h:7000", True)
    assert parse_url("redis://h:6379/0", False) == ("redis://h:6379/0", False)
    assert parse_url("redis://h:6379/0", True) == ("redis://h:6379/0", True)


async def test_health_without_redis(client: Any) -> None:
    """With REDIS_URL unset the gateway is healthy and says Redis is not configured."""
    body = await (await client.get("/health")).json()
    assert body["status"] == "ok"
    assert body["dependencies"]["redis"] == {"state": "not_configured"}


async def test_health_follows_redis(make_client: MakeClient, redis_server: RedisServer) -> None:
    """Health is ok with Redis, degraded when it stops, ok again once it is back."""
    client = await make_client(redis_url=redis_server.url, redis_health_interval=0.05)
    body = await (await client.get("/health")).json()
    assert body["status"] == "ok"
    assert body["dependencies"]["redis"]["state"] == "ok"

    redis_server.stop()
    response = await client.get("/health")
    body = await response.json()
    assert response.status == 200
    assert body["status"] == "degraded"
    assert body["dependencies"]["redis"]["state"] == "degraded"
    # What failed, not where: /health needs no key, and the message names Redis's host and port.
    assert body["dependencies"]["redis"]["error"] in ("ConnectionError", "TimeoutError")
    assert str(redis_server.port) not in await response.text()
    metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert str(redis_server.port) in metrics["redis"]["last_error"]  # the operator's view has it

    redis_server.start()
    connection = client.app[REDIS]
    assert connection is not None
    # The background ping notices by itself, without any request asking.
    await wait_until(lambda: connection.available, timeout=10)
    assert connection.recoveries == 1
    assert await connection.client.set("gw-test:after", b"1")
    body = await (await client.get("/health")).json()
    assert body["status"] == "ok"


async def test_starts_while_redis_is_down(make_client: MakeClient) -> None:
    """A Redis that is down at start-up does not stop the gateway; health says degraded."""
    server = RedisServer()  # a free port nobody listens on yet
    client = await make_client(redis_url=server.url, redis_health_interval=0.05)
    try:
        body = await (await client.get("/health")).json()
        assert body["status"] == "degraded"
        server.start()
        connection = client.app[REDIS]
        assert connection is not None
        await wait_until(lambda: connection.available, timeout=10)
    finally:
        server.cleanup()


async def test_more_requests_in_flight_than_connections_wait_for_one(
    make_client: MakeClient, redis_server: RedisServer
) -> None:
    """A burst of misses from many users, each wanting a connection for its cache and limit calls,
    queues for the pool: every request is admitted by Redis (limits fail closed here) and Redis is
    never taken for unreachable. redis-py's default pool raised at its cap instead."""
    client = await make_client(redis_url=redis_server.url, redis_max_connections=2, rate_limit_fail_mode="closed",
                               redis_timeout=5.0)  # fmt: skip
    await assert_a_burst_waits_for_connections(client)
