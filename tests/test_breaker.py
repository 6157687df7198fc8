"""The generic circuit breaker, in memory and shared through the machine's real Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from pipeline.breaker import (
    BreakerPolicy,
    BreakerRecord,
    BreakerState,
    BreakerStore,
    CircuitBreaker,
    CircuitOpen,
    MemoryBreakerStore,
)
from pipeline.breaker_redis import RedisBreakerStore

POLICY = BreakerPolicy(failure_threshold=3, reset_timeout=30.0, success_threshold=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Link:
    """A RedisLink over the machine's Redis with a random key prefix."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.available = True
        self.errors: list[BaseException] = []

    def failed(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.available = False


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    client = Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=1.0)
    link = Link(client, f"gw-test-{secrets.token_hex(6)}:")
    yield link
    keys = [key async for key in client.scan_iter(match=link.prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Callable[[], BreakerStore]:
    if request.param == "memory":
        store = MemoryBreakerStore()
        return lambda: store
    link = request.getfixturevalue("link")
    return lambda: RedisBreakerStore(link)


async def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(RuntimeError):
            async with breaker.guard():
                raise RuntimeError("upstream down")


async def succeed(breaker: CircuitBreaker) -> None:
    async with breaker.guard():
        pass


async def test_opens_after_threshold_and_refuses(make_store: Callable[[], BreakerStore]) -> None:
    """N consecutive failures open the circuit; while open the body never runs."""
    breaker = CircuitBreaker("up", POLICY, store=make_store(), clock=Clock())
    await fail(breaker, 2)
    assert await breaker.state() is BreakerState.CLOSED
    await fail(breaker, 1)
    assert await breaker.state() is BreakerState.OPEN
    ran = False
    with pytest.raises(CircuitOpen) as refused:
        async with breaker.guard():
            ran = True
    assert not ran
    assert refused.value.retry_in == pytest.approx(30.0)
    assert breaker.snapshot()["state"] == "open"
    assert breaker.snapshot()["rejected"] == 1


async def test_success_resets_the_count(make_store: Callable[[], BreakerStore]) -> None:
    """Only consecutive failures count: a success in between starts over."""
    breaker = CircuitBreaker("up", POLICY, store=make_store(), clock=Clock())
    await fail(breaker, 2)
    await succeed(breaker)
    await fail(breaker, 2)
    assert await breaker.state() is BreakerState.CLOSED


async def test_half_open_recovery(make_store: Callable[[], BreakerStore], caplog: pytest.LogCaptureFixture) -> None:
    """After the timeout one probe at a time goes through; M successes close the circuit, and
    the log says so (the opening was a warning: without this the outage never ended in it)."""
    caplog.set_level("INFO", logger="pipeline.breaker")
    clock = Clock()
    breaker = CircuitBreaker("up", POLICY, store=make_store(), clock=clock)
    await fail(breaker, 3)
    clock.now += 29.9
    assert await breaker.state() is BreakerState.OPEN
    clock.now += 0.2
    assert await breaker.state() is BreakerState.HALF_OPEN
    assert await breaker.allow()
    assert not await breaker.allow()  # the first probe is still in flight
    await breaker.record_success()
    assert await breaker.state() is BreakerState.HALF_OPEN  # one of two successes
    assert "circuit up closed" not in caplog.text
    await succeed(breaker)
    assert await breaker.state() is BreakerState.CLOSED
    assert caplog.text.count("circuit up closed: calls go out again") == 1
    await fail(breaker, 2)
    assert await breaker.state() is BreakerState.CLOSED  # the count started over


async def test_half_open_failure_reopens(make_store: Callable[[], BreakerStore]) -> None:
    """A failed probe opens the circuit for another full timeout."""
    clock = Clock()
    breaker = CircuitBreaker("up", POLICY, store=make_store(), clock=clock)
    await fail(breaker, 3)
    clock.now += 31
    await fail(breaker, 1)
    assert await breaker.state() is BreakerState.OPEN
    assert await breaker.retry_in() == pytest.approx(30.0)
    assert breaker.opened == 2


async def test_cancelled_probe_frees_the_slot() -> None:
    """A probe whose caller is cancelled records nothing but lets the next probe through."""
    clock = Clock()
    breaker = CircuitBreaker("up", POLICY, clock=clock)
    await fail(breaker, 3)
    clock.now += 31

    class Cancelled(BaseException):
        pass

    with pytest.raises(Cancelled):
        async with breaker.guard():
            raise Cancelled
    assert await breaker.allow()


async def test_state_is_shared_through_redis(link: Link) -> None:
    """Two instances on one Redis: one opens the circuit, the other stops calling too."""
    clock = Clock()
    first = CircuitBreaker("llm", POLICY, store=RedisBreakerStore(link), clock=clock)
    second = CircuitBreaker("llm", POLICY, store=RedisBreakerStore(link), clock=clock)
    other = CircuitBreaker("search", POLICY, store=RedisBreakerStore(link), clock=clock)
    await fail(first, 2)
    await fail(second, 1)  # failures from both instances add up
    assert await first.state() is BreakerState.OPEN
    assert not await second.allow()
    assert await other.allow()  # breakers are per name
    ttl = await link.client.ttl(link.prefix + "breaker:llm")
    assert 0 < ttl <= 86_400

    clock.now += 31
    assert await second.allow()  # one probe...
    await second.record_success()
    assert await first.allow()  # ...per instance
    await first.record_success()
    assert await second.state() is BreakerState.CLOSED


async def test_redis_down_falls_back_to_local_state() -> None:
    """If Redis stops answering the breaker keeps working on its own memory."""
    broken = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    link = Link(broken, "gw-test:")
    breaker = CircuitBreaker("llm", POLICY, store=RedisBreakerStore(link), clock=Clock())
    await fail(breaker, 3)
    assert len(link.errors) == 1  # the link learned Redis is down; later calls skip it
    assert await breaker.state() is BreakerState.OPEN
    await broken.aclose()


# The reference search (issue 11) drives the breaker by hand: allow / record_* / release.


async def test_manual_use_counts_consecutive_failures() -> None:
    """Only consecutive failures count toward the threshold."""
    breaker = CircuitBreaker("search", BreakerPolicy(failure_threshold=2, reset_timeout=10), clock=Clock())
    await breaker.record_failure()
    await breaker.record_success()
    await breaker.record_failure()
    assert await breaker.state() is BreakerState.CLOSED and await breaker.allow()
    await breaker.record_failure()
    assert await breaker.state() is BreakerState.OPEN and not await breaker.allow()


async def test_manual_half_open_trial_decides() -> None:
    """After the timeout one call may try; failure reopens, success (threshold 1) closes."""
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=10, success_threshold=1)
    breaker = CircuitBreaker("search", policy, clock=clock)
    await breaker.record_failure()
    clock.now += 10
    assert await breaker.state() is BreakerState.HALF_OPEN
    assert await breaker.allow() and not await breaker.allow()  # one trial at a time
    await breaker.record_failure()
    assert await breaker.state() is BreakerState.OPEN
    clock.now += 10
    assert await breaker.allow()
    await breaker.record_success()
    assert await breaker.state() is BreakerState.CLOSED
    assert await breaker.allow() and await breaker.allow()


async def test_manual_release_frees_the_next_trial() -> None:
    """A trial that ends with no verdict does not leave the breaker stuck."""
    clock = Clock()
    breaker = CircuitBreaker("search", BreakerPolicy(failure_threshold=1, reset_timeout=1), clock=clock)
    await breaker.record_failure()
    clock.now += 1
    assert await breaker.allow()
    breaker.release()
    assert await breaker.allow()


async def test_store_outage_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A failing store is reported when it fails and when it is back, not on every call."""

    class Flaky(MemoryBreakerStore):
        down = True

        async def load(self, name: str) -> BreakerRecord:
            if self.down:
                raise ConnectionError("store unreachable")
            return await super().load(name)

    store = Flaky()
    breaker = CircuitBreaker("llm", POLICY, store=store, clock=Clock())
    for _ in range(5):
        assert await breaker.allow()
    store.down = False
    assert await breaker.allow()
    messages = [r.getMessage() for r in caplog.records if r.name == "pipeline.breaker"]
    assert len(messages) == 2
    assert "store failed" in messages[0] and "store is back" in messages[1]
