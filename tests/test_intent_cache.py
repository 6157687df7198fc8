"""The intent cache: stable keys, hits, TTL 0, single flight, no cached fallbacks, Redis storage."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from gateway.appkeys import INTENT_CACHE, REDIS, TRACING
from pipeline.cache import (
    FALLBACK_FLAG,
    PROVISIONAL_FLAG,
    IntentCache,
    MemoryCache,
    cache_key,
)
from pipeline.classifiers.rules import RulesClassifier
from pipeline.types import ClassifierInput, IntentClassification
from tests.conftest import GatedClassifier, MakeClient, wait_until
from tests.redis_servers import RedisServer, needs_redis

PROCESS = "/api/v1/enhanced/process"
IMAGE = "https://a.supabase.co/p.jpg"


class CountingClassifier:
    """Delegates to the rules and counts the calls that reached it.

    `at_once`: answers from `quick_answer`, as the embedded classifier's fast tier does.
    """

    name = "counting"
    version = "counting-1"

    def __init__(self, *, flag: str | None = None, at_once: bool = False) -> None:
        self.calls = 0
        self.flag = flag  # a metadata flag every answer carries
        self.at_once = at_once

    async def quick_answer(self, query: ClassifierInput) -> IntentClassification | None:
        return self._answer(query) if self.at_once else None

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        return self._answer(query)

    def _answer(self, query: ClassifierInput) -> IntentClassification:
        self.calls += 1
        result = RulesClassifier().classify_sync(query)
        if self.flag:
            return msgspec.structs.replace(result, metadata={self.flag: True})
        return result


class Versioned:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version

    async def quick_answer(self, query: Any) -> None:
        return None  # answers only by awaiting

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        raise NotImplementedError


def test_key_ignores_case_and_spacing_but_not_context_or_version() -> None:
    """Same words and context share a key; another version, image or mention does not."""
    v1 = Versioned("llm", "1")
    base = cache_key(v1, ClassifierInput(prompt="Make it  BLUE"))
    assert cache_key(v1, ClassifierInput(prompt=" make it blue ")) == base
    assert cache_key(Versioned("llm", "2"), ClassifierInput(prompt="make it blue")) != base
    assert cache_key(v1, ClassifierInput(prompt="make it blue", working_images=(IMAGE,))) != base
    assert cache_key(v1, ClassifierInput(prompt="make it blue", uploaded_images=(IMAGE,))) != base
    assert cache_key(v1, ClassifierInput(prompt="make it blue", mentions=("sarah",))) != base
    # The image itself is not a feature, only whether there is one.
    assert cache_key(v1, ClassifierInput(prompt="x", working_images=(IMAGE,))) == cache_key(
        v1, ClassifierInput(prompt="x", working_images=(IMAGE + "?v=2",))
    )


def test_key_is_the_same_in_another_process() -> None:
    """Keys do not depend on the process (no hash() randomization)."""
    code = (
        "from pipeline.cache import cache_key; from pipeline.types import ClassifierInput\n"
        "from pipeline.classifiers.rules import RulesClassifier\n"
        "print(cache_key(RulesClassifier(), ClassifierInput(prompt='a red fox', mentions=('sarah',))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = cache_key(RulesClassifier(), ClassifierInput(prompt="a red fox", mentions=("sarah",)))
    assert other.stdout.strip() == here


async def test_second_identical_request_is_a_hit(make_client: MakeClient) -> None:
    """The same prompt again is answered from the cache, without the classifier."""
    counting = CountingClassifier()
    client = await make_client(classifier=counting)
    first = await (await client.post(PROCESS, json={"prompt": "A red fox"})).json()
    second = await (await client.post(PROCESS, json={"prompt": "a red  fox"})).json()
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert second["workflow_type"] == first["workflow_type"]
    assert counting.calls == 1
    stats = client.app[INTENT_CACHE].stats()
    assert (stats["hits"], stats["misses"], stats["backend"]) == (1, 1, "memory")


async def test_a_miss_answered_at_once_is_cached_like_any_other(make_client: MakeClient) -> None:
    """The fast tier's answer, given without a flight or a slot, is remembered too."""
    counting = CountingClassifier(at_once=True)
    client = await make_client(classifier=counting)
    first = await (await client.post(PROCESS, json={"prompt": "A red fox"})).json()
    second = await (await client.post(PROCESS, json={"prompt": "a red  fox"})).json()
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert counting.calls == 1
    stats = client.app[INTENT_CACHE].stats()
    assert (stats["hits"], stats["misses"], stats["coalesced"]) == (1, 1, 0)


async def test_context_changes_the_answer_key(make_client: MakeClient) -> None:
    """The same words with a working image are a different question: a miss."""
    client = await make_client(classifier=CountingClassifier())
    await client.post(PROCESS, json={"prompt": "make it pop"})
    with_image = await client.post(PROCESS, json={"prompt": "make it pop", "working_image_url": IMAGE})
    assert (await with_image.json())["cache_hit"] is False


async def test_ttl_zero_disables_the_cache(make_client: MakeClient) -> None:
    """INTENT_CACHE_TTL=0: every request runs the classifier."""
    counting = CountingClassifier()
    client = await make_client(classifier=counting, intent_cache_ttl=0)
    for _ in range(3):
        assert (await (await client.post(PROCESS, json={"prompt": "a red fox"})).json())["cache_hit"] is False
    assert counting.calls == 3


@pytest.mark.parametrize("flag", [FALLBACK_FLAG, PROVISIONAL_FLAG])
@pytest.mark.parametrize("at_once", [False, True])
async def test_fallback_and_provisional_answers_are_not_cached(
    make_client: MakeClient, flag: str, at_once: bool
) -> None:
    """An answer flagged as a fallback (the LLM failed) or provisional (MiniLM was too busy to
    ask) is served but not remembered: the next request tries for the better answer."""
    counting = CountingClassifier(flag=flag, at_once=at_once)
    client = await make_client(classifier=counting)
    for _ in range(2):
        assert (await (await client.post(PROCESS, json={"prompt": "a red fox"})).json())["cache_hit"] is False
    assert counting.calls == 2


async def test_existing_arm_bypasses_the_cache(make_client: MakeClient) -> None:
    """The rules baseline (use_ai_classification=false) is computed every time."""
    client = await make_client()
    body = {"prompt": "a red fox", "use_ai_classification": False}
    for _ in range(2):
        assert (await (await client.post(PROCESS, json=body)).json())["cache_hit"] is False
    assert client.app[INTENT_CACHE].stats()["misses"] == 0


async def test_concurrent_identical_misses_classify_once(make_client: MakeClient) -> None:
    """Single flight: five identical requests in flight together make one classifier call."""
    counting = CountingClassifier()
    gated = GatedClassifier(counting)
    client = await make_client(classifier=gated)
    requests = [asyncio.create_task(client.post(PROCESS, json={"prompt": "a red fox"})) for _ in range(5)]
    await asyncio.wait_for(gated.entered.wait(), 5)
    cache = client.app[INTENT_CACHE]
    await wait_until(lambda: cache.coalesced == 4, timeout=5)
    gated.gate.set()
    answers = [await (await request).json() for request in requests]
    assert counting.calls == 1
    assert {answer["workflow_type"] for answer in answers} == {answers[0]["workflow_type"]}
    # The four that waited say in their intent span whose trace holds the shared call.
    buffer = client.app[TRACING].buffer
    intent_spans = {}
    for answer in answers:
        trace = buffer.get(answer["trace_id"])
        assert trace is not None and trace.spans is not None
        (intent_spans[answer["trace_id"]],) = [s for s in trace.spans if s.name == "stage.intent"]
    led = [t for t, span in intent_spans.items() if "coalesced_with" not in span.attributes]
    assert len(led) == 1
    assert {span.attributes.get("coalesced_with") for t, span in intent_spans.items() if t not in led} == set(led)


async def test_one_cancelled_waiter_does_not_cancel_the_others(make_client: MakeClient) -> None:
    """A client that leaves mid-flight does not take the shared classification with it."""
    counting = CountingClassifier()
    gated = GatedClassifier(counting)
    client = await make_client(classifier=gated)
    cache = client.app[INTENT_CACHE]
    leaving = asyncio.create_task(client.post(PROCESS, json={"prompt": "a red fox"}))
    await asyncio.wait_for(gated.entered.wait(), 5)
    staying = asyncio.create_task(client.post(PROCESS, json={"prompt": "a red fox"}))
    await wait_until(lambda: cache.coalesced == 1, timeout=5)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    gated.gate.set()
    response = await staying
    assert response.status == 200
    assert counting.calls == 1


async def test_a_request_arriving_as_the_last_waiter_leaves_gets_its_own_answer() -> None:
    """The flight the last waiter cancels is not joined by a request that comes a moment later."""
    cache = IntentCache(ttl=60, redis=None, timeout=1.0)
    classifier = CountingClassifier()
    query = ClassifierInput(prompt="animate this sunset")
    gate = asyncio.Event()

    async def slow_classify() -> IntentClassification:
        await gate.wait()
        return await classifier.classify(query)

    leaving = asyncio.create_task(cache.get_or_classify(classifier, query, slow_classify))
    await asyncio.sleep(0)  # its flight has taken off and waits at the gate
    leaving.cancel()
    await asyncio.sleep(0)  # the leaver has gone; its flight is cancelled but not yet wound down
    arriving = asyncio.create_task(cache.get_or_classify(classifier, query, slow_classify))
    gate.set()
    result, hit = await asyncio.wait_for(arriving, 5)
    assert (result.workflow_type.value, hit) == ("image_to_video", False)
    assert leaving.cancelled()
    await cache.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


async def two_instances(make_client: MakeClient, redis_server: RedisServer) -> tuple[str, Any, Any]:
    """Two app instances, each with its own Redis client, sharing one key prefix."""
    prefix = f"gw-test-{os.urandom(4).hex()}:"
    one = await make_client(redis_url=redis_server.url, redis_key_prefix=prefix)
    two = await make_client(redis_url=redis_server.url, redis_key_prefix=prefix)
    return prefix, one, two


async def cache_hit(client: Any, prompt: str) -> bool:
    response = await client.post(PROCESS, json={"prompt": prompt})
    return bool((await response.json())["cache_hit"])


@needs_redis
async def test_two_instances_share_hits_through_redis(
    make_client: MakeClient, redis_server: RedisServer
) -> None:
    """Classified through one app instance, a hit through another with its own client."""
    _, one, two = await two_instances(make_client, redis_server)
    assert await cache_hit(one, "a red fox") is False
    assert await cache_hit(two, "a red fox") is True
    assert two.app[INTENT_CACHE].stats()["backend"] == "redis"


@needs_redis
async def test_cache_falls_back_to_memory_and_back(
    make_client: MakeClient, redis_server: RedisServer
) -> None:
    """Redis gone: answers still 200 (cached in memory); Redis back: cached in Redis again."""
    client: Any = await make_client(redis_url=redis_server.url, redis_health_interval=0.05)
    cache = client.app[INTENT_CACHE]
    redis_server.stop()
    for _ in range(2):
        response = await client.post(PROCESS, json={"prompt": "during the outage"})
        assert response.status == 200
    assert (await response.json())["cache_hit"] is True
    assert cache.stats()["backend"] == "memory"
    redis_server.start()
    await wait_until(lambda: cache.backend == "redis", timeout=10)
    await client.post(PROCESS, json={"prompt": "after the outage"})
    assert (await (await client.post(PROCESS, json={"prompt": "after the outage"})).json())[
        "cache_hit"
    ] is True
    assert len(await cache.remote.client.keys("gw:intent:*")) == 1


async def test_a_memory_hit_is_answered_without_waiting_on_the_loop() -> None:
    """A hit starts no task and never yields: a cache-hit stream runs through in one loop turn."""
    cache = IntentCache(ttl=60, redis=None, timeout=1.0)
    classifier = CountingClassifier()
    query = ClassifierInput(prompt="animate this sunset")
    classify = lambda: classifier.classify(query)  # noqa: E731
    assert (await cache.get_or_classify(classifier, query, classify))[1] is False
    lookup = cache.get_or_classify(classifier, query, classify)
    with pytest.raises(StopIteration) as finished:
        lookup.send(None)  # runs the coroutine until it would wait; a hit never does
    result, hit = finished.value.value
    assert hit is True and result.workflow_type.value == "image_to_video"
    assert classifier.calls == 1
    await cache.close()


def test_memory_cache_entries_expire_when_read_and_the_oldest_go_first() -> None:
    now = [0.0]
    near = MemoryCache(entries=2, ttl=30.0, clock=lambda: now[0])
    result = RulesClassifier().classify_sync(ClassifierInput(prompt="animate this sunset"))
    near.put("a", result)
    near.put("b", result)
    near.put("a", result)  # refreshed: now the newest
    near.put("c", result)  # full: "b" is the oldest
    assert near.get("b") is None and near.get("a") is result and near.get("c") is result
    now[0] = 30.0
    assert near.get("a") is None and len(near) == 1


async def test_a_memory_entry_does_not_keep_the_request_that_stored_it_alive() -> None:
    """aiocache's own memory cache armed a loop timer per key, and the timer kept the storing
    request's context (its span, task and stream) for the whole TTL."""

    class Request:
        pass

    request = Request()
    current: contextvars.ContextVar[Request] = contextvars.ContextVar("current")
    cache = IntentCache(ttl=3600, redis=None, timeout=1.0)
    classifier = CountingClassifier()
    query = ClassifierInput(prompt="animate this sunset")

    async def serve(request: Request) -> None:
        current.set(request)
        await cache.get_or_classify(classifier, query, lambda: classifier.classify(query))

    served = asyncio.create_task(serve(request))  # a task of its own, with a context of its own
    await served
    await asyncio.sleep(0)  # the loop lets go of the handle that woke us (it holds `served`)
    alive = weakref.ref(request)
    del request, served
    gc.collect()
    assert alive() is None
    assert (await cache.get_or_classify(classifier, query, lambda: classifier.classify(query)))[1] is True
    await cache.close()


@needs_redis
async def test_a_redis_hit_is_kept_near_and_repeats_skip_redis(
    make_client: MakeClient, redis_server: RedisServer
) -> None:
    """Another instance's first lookup reads Redis; its repeats are answered from near."""
    prefix, one, two = await two_instances(make_client, redis_server)
    assert await cache_hit(one, "a blue heron") is False
    assert await cache_hit(two, "a blue heron") is True
    redis = two.app[REDIS].client
    await redis.delete(*await redis.keys(f"{prefix}intent*"))  # Redis no longer has it
    assert [await cache_hit(two, "a blue heron") for _ in range(2)] == [True, True]
    assert two.app[INTENT_CACHE].stats()["near_hits"] == 2
    assert await cache_hit(one, "a blue heron") is True
