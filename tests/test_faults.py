"""Faults: disconnects leak nothing, 500 slow readers get 200s, and all outages at once answer 200."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aioresponses import aioresponses

from gateway.appkeys import IN_FLIGHT, REQUEST_LOG, SLOTS, STAGES
from pipeline.classifiers.rules import RulesClassifier
from tests.conftest import GatedClassifier, MakeClient, wait_until
from tests.pg import TcpProxy
from tests.redis_servers import RedisServer, needs_redis
from tests.sse import parse_events
from tests.test_llm import BASE_URL, ENDPOINT, ERROR

PROCESS = "/api/v1/enhanced/process"
STREAM = "/api/v1/enhanced/stream"
NO_LIMITS = {
    "rate_limit_requests_per_minute": 1_000_000,
    "rate_limit_requests_per_hour": 1_000_000,
    "cost_limit_per_hour": 1_000_000.0,
}


class GatedStage:
    """Wraps one stage's run: signals entry, then waits for a gate that never opens."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.cancelled = False

    async def __call__(self, state: Any) -> Any:
        self.entered.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return await self.run(state)


async def _request(session: aiohttp.ClientSession, url: Any, path: str) -> None:
    async with session.post(url.with_path(path), json={"prompt": "change my hair to blonde"}) as resp:
        await resp.read()


def _others(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task()}


@pytest.mark.parametrize("path", [STREAM, PROCESS])
@pytest.mark.parametrize("stage", ["context", "intent", "model", "prompt"])
async def test_client_disconnect_at_each_stage_leaks_no_slot_or_task(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, stage: str, path: str
) -> None:
    """The client hangs up while a stage runs: the pipeline is cancelled, its slot and tasks are gone."""
    classifier = GatedClassifier(RulesClassifier())
    client = await make_client(classifier=classifier, **NO_LIMITS)
    app = client.app
    gated: GatedStage | None = None
    if stage == "intent":  # held inside the classifier, so while it holds a classification slot
        entered = classifier.entered
    else:
        classifier.gate.set()
        target = next(s for s in app[STAGES] if s.name == stage)
        gated = GatedStage(target.run)
        monkeypatch.setattr(target, "run", gated)
        entered = gated.entered

    before = set(asyncio.all_tasks())
    session = aiohttp.ClientSession()
    request = asyncio.create_task(_request(session, client.make_url("/"), path))
    await asyncio.wait_for(entered.wait(), timeout=5)
    if stage == "intent":
        assert app[SLOTS].in_use == 1
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await session.close()  # the connection is gone: aiohttp cancels the handler

    await wait_until(lambda: not _others(before), timeout=5)
    assert app[SLOTS].in_use == 0 and app[SLOTS].waiting == 0
    gc.collect()
    assert len(app[IN_FLIGHT]) == 0
    if gated is not None:
        assert gated.cancelled
        gated.gate.set()
    classifier.gate.set()
    # The gateway is whole: the next request is served normally.
    assert (await client.post(PROCESS, json={"prompt": "a cat"})).status == 200


async def _slow_stream(session: aiohttp.ClientSession, url: Any, i: int) -> tuple[int, list[str]]:
    body = {"prompt": f"cinematic video of waves number {i}", "user_preferences": {"quality": "speed"}}
    async with session.post(url, json=body, headers={"X-User-Id": f"reader-{i % 50}"}) as resp:
        chunks = []
        async for chunk in resp.content.iter_chunked(256):  # a slow reader: small bites, pauses
            chunks.append(chunk)
            await asyncio.sleep(0.005)
        return resp.status, [e.event for e in parse_events(b"".join(chunks))] if resp.status == 200 else []


async def test_500_concurrent_slow_streams_all_finish_without_5xx(make_client: MakeClient) -> None:
    """500 streams at once, each read slowly: every one is 200 and ends with `done`."""
    client = await make_client(classifier=RulesClassifier(), **NO_LIMITS)
    url = client.make_url(STREAM)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(_slow_stream(session, url, i) for i in range(500)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 500, {s: statuses.count(s) for s in set(statuses)}
    assert all(events[-1] == "done" and "error" not in events for _, events in results)
    assert client.app[SLOTS].in_use == 0
    # Finished streams are forgotten (no heartbeat timer keeps them) once their connections close.
    await wait_until(lambda: (gc.collect(), len(client.app[IN_FLIGHT]))[1] == 0, timeout=10)


async def _rows(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        intents = await conn.fetchval("SELECT count(*) FROM intent_classification_logs")
        models = await conn.fetchval("SELECT count(*) FROM model_selection_logs")
        return int(intents), int(models)
    finally:
        await conn.close()


@needs_redis
async def test_llm_redis_and_postgres_down_at_once_still_answer_200_and_lose_no_row(
    postgres_db: str, make_client: MakeClient, upstream: aioresponses, tmp_path: Path
) -> None:
    """LLM failing, Redis stopped, Postgres cut, all at once: every request 200, every row written later."""
    upstream.post(ENDPOINT, status=500, payload=ERROR, repeat=True)
    redis = RedisServer().start()
    proxy = TcpProxy()
    await proxy.start()
    try:
        client = await make_client(
            intent_classifier="llm",
            openai_api_key="sk-test",
            openai_base_url=BASE_URL,
            llm_backoff_base=0.001,
            redis_url=redis.url,
            database_url=postgres_db.replace(":5432/", f":{proxy.port}/"),
            analytics_spill_path=str(tmp_path / "spill.jsonl"),
            analytics_flush_seconds=0.05,
            **NO_LIMITS,
        )
        writer = client.app[REQUEST_LOG]
        assert (await client.post(PROCESS, json={"prompt": "warm up"})).status == 200
        await wait_until(lambda: writer.stats.written == 1, timeout=10)

        redis.stop()
        await proxy.stop()
        answered = 0
        for i in range(20):
            body = {"prompt": f"make my hair blonde, take {i}"}
            resp = await client.post(PROCESS if i % 2 else STREAM, json=body)
            assert resp.status == 200
            payload = await resp.read()
            result = parse_events(payload)[-1].data if i % 2 == 0 else json.loads(payload)
            assert result["fallback_used"] is True and result["intent_source"] == "local"  # llm -> local
            answered += 1
        health = await (await client.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["dependencies"]["postgres"]["state"] == "down"
        assert health["dependencies"]["redis"]["state"] != "ok"
        assert health["dependencies"]["llm"]["state"] != "ok"

        await proxy.start()  # Postgres back: the buffered rows are written, none lost
        await wait_until(lambda: writer.stats.written == 1 + answered, timeout=20)
        assert await _rows(postgres_db) == (1 + answered, 1 + answered)
        assert writer.stats.dropped == 0
        await client.close()
    finally:
        redis.stop()
        with contextlib.suppress(AssertionError):
            await proxy.stop()


@needs_redis
async def test_health_answers_within_a_second_with_redis_and_postgres_both_hung(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """Both keep their connections and answer nothing (frozen hosts): /health says so inside a
    load balancer's usual 1 s probe timeout, its probes side by side (in turn they took 1.5 s)."""
    redis = RedisServer().start()
    proxy = TcpProxy()
    await proxy.start()
    try:
        client = await make_client(
            redis_url=redis.url,
            database_url=postgres_db.replace(":5432/", f":{proxy.port}/"),
            analytics_spill_path=str(tmp_path / "spill.jsonl"),
        )
        health = await (await client.get("/health")).json()
        assert {health["dependencies"][name]["state"] for name in ("redis", "postgres")} == {"ok"}
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        proxy.pause()
        loop = asyncio.get_running_loop()
        started = loop.time()
        health = await (await client.get("/health")).json()
        assert loop.time() - started < 0.9
        assert health["status"] == "degraded" and health["dependencies"]["postgres"]["state"] == "down"
        assert health["dependencies"]["redis"]["state"] != "ok"
        redis.process.send_signal(signal.SIGCONT)
        proxy.resume()
        await client.close()
    finally:
        redis.stop()
        await proxy.stop()


@needs_redis
async def test_clients_gone_while_redis_answers_release_their_slots_at_once(
    make_client: MakeClient, upstream: aioresponses
) -> None:
    """Python 3.11's asyncio.wait_for, which redis-py wraps around every command and aiocache
    around every lookup, drops a cancellation that lands as the command finishes: the request
    of a client that hung up then went on to the LLM and held a classification slot."""

    async def hang(url: Any, **kwargs: Any) -> None:
        await asyncio.sleep(30)

    upstream.post(ENDPOINT, callback=hang, repeat=True)
    redis = RedisServer().start()
    try:
        client = await make_client(intent_classifier="llm", openai_api_key="sk-test", openai_base_url=BASE_URL,
                                   redis_url=redis.url, classification_timeout=20, **NO_LIMITS)
        slots = client.app[SLOTS]
        for attempt in range(3):  # each stream hangs up right after its first event
            streams = []
            for i in range(12):
                reader, writer = await asyncio.open_connection(client.host, client.port)
                body = json.dumps({"prompt": f"change my hair, take {attempt}.{i}"}).encode()
                writer.write(b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                streams.append((reader, writer))
            for reader, writer in streams:
                await reader.readuntil(b"event: context")
                writer.close()
            try:
                await wait_until(lambda: slots.in_use == 0 and slots.waiting == 0, timeout=2)
            except TimeoutError:
                raise AssertionError((attempt, slots.in_use, slots.waiting)) from None
    finally:
        redis.stop()
