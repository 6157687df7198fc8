"""Every request logged once in each table, through outages, spills, restarts and shutdowns."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import redis.asyncio
from aioresponses import aioresponses

from gateway.analytics.pool import create_pool
from gateway.analytics.rows import LogEntry, prompt_columns
from gateway.analytics.schema import migrate
from gateway.analytics.writer import LogWriter, is_transient, spill_path_problem
from gateway.appkeys import ANALYTICS, REQUEST_LOG
from gateway.config import ConfigError
from pipeline.classifiers.rules import RulesClassifier
from pipeline.types import ClassifierInput, IntentClassification
from tests.conftest import GatedClassifier, MakeClient, wait_until
from tests.pg import TcpProxy
from tests.redis_servers import RedisServer
from tests.test_llm import ENDPOINT, ERROR, answer, completion
from tests.test_llm_app import LLM

PROCESS = "/api/v1/enhanced/process"
STREAM = "/api/v1/enhanced/stream"


async def _count(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return count
    finally:
        await conn.close()


async def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query)
        return rows
    finally:
        await conn.close()


async def _counts(url: str) -> tuple[int, int]:
    return await _count(url, "intent_classification_logs"), await _count(url, "model_selection_logs")


async def _db_client(make_client: MakeClient, url: str, tmp_path: Path, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "database_url": url,
        "analytics_spill_path": str(tmp_path / "spill.jsonl"),
        "analytics_flush_seconds": 0.05,
        # These tests send hundreds of requests as one user: the limits are not what they test.
        "rate_limit_requests_per_minute": 100_000,
        "rate_limit_requests_per_hour": 100_000,
        **overrides,
    }
    return await make_client(**settings)


async def _drop_under_the_gateway(url: str, statement: str) -> None:
    """Run a DROP while the gateway refreshes its views (every 0.1-0.2 s in these tests): when
    Postgres picks the drop as the deadlock's victim, it goes again."""
    conn = await asyncpg.connect(url)
    try:
        for attempt in range(5):
            try:
                await conn.execute(statement)
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == 4:
                    raise
    finally:
        await conn.close()


async def _process(client: Any, prompt: str = "a cat playing in the garden", **headers: str) -> Any:
    resp = await client.post(PROCESS, json={"prompt": prompt}, headers=headers)
    assert resp.status == 200
    return resp


class NothingAskedWhenGreeted(RulesClassifier):
    """The rules, but "hello" is a prompt that asks for nothing (as the embedded classifier says)."""

    def classify_sync(self, query: ClassifierInput) -> IntentClassification:
        result = super().classify_sync(query)
        if query.prompt.startswith("hello"):
            return msgspec.structs.replace(result, metadata={"no_clear_intent": True, "low_confidence": True})
        return result


async def test_a_prompt_that_asks_for_nothing_is_marked_in_its_row(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """How often users arrive without asking for anything is one query away; a request that
    ended before it was classified says "not known"."""
    client = await _db_client(make_client, postgres_db, tmp_path, classifier=NothingAskedWhenGreeted(),
                              rate_limit_requests_per_minute=2)
    await _process(client, "hello!")
    await _process(client, "a lighthouse in a storm")
    assert (await client.post(PROCESS, json={"prompt": "refused: over the limit"})).status == 429
    await wait_until(lambda: client.app[REQUEST_LOG].stats.written == 3, timeout=10)
    rows = await _fetch(postgres_db, "SELECT prompt, outcome, no_clear_intent FROM intent_classification_logs "
                                     "ORDER BY prompt NULLS LAST")
    assert [(r["prompt"], r["outcome"], r["no_clear_intent"]) for r in rows] == [
        ("a lighthouse in a storm", "ok", False), ("hello!", "ok", True), (None, "rate_limited", None)]


async def test_n_requests_make_n_rows_in_each_table(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """/process and both streams each leave exactly one row per table, with source, arm and trace id."""
    client = await _db_client(make_client, postgres_db, tmp_path)
    traces = []
    for i in range(12):
        traces.append((await _process(client, f"change my hair to blonde {i}")).headers["X-Trace-Id"])
    for _ in range(4):
        resp = await client.post(STREAM, json={"prompt": "animate this sunset"})
        await resp.read()
        traces.append(resp.headers["X-Trace-Id"])
    for _ in range(4):
        resp = await client.get(STREAM, params={"prompt": "cinematic video of waves"})
        await resp.read()
        traces.append(resp.headers["X-Trace-Id"])
    writer = client.app[REQUEST_LOG]
    await wait_until(lambda: writer.stats.written == 20, timeout=10)
    assert await _counts(postgres_db) == (20, 20)
    conn = await asyncpg.connect(postgres_db)
    try:
        rows = await conn.fetch("SELECT * FROM intent_classification_logs")
        models = await conn.fetch("SELECT * FROM model_selection_logs")
    finally:
        await conn.close()
    assert sorted(r["trace_id"] for r in rows) == sorted(traces)
    assert {r["route"] for r in rows} == {"process", "stream"}
    assert {r["outcome"] for r in rows} == {"ok"}
    assert not any(r["no_clear_intent"] for r in rows)
    assert {r["intent_source"] for r in rows} == {"rules"} and {r["arm"] for r in rows} == {"ai"}
    assert all(r["prompt"] and len(r["prompt_sha256"]) == 64 for r in rows)
    hair = [r for r in rows if r["classified_workflow"] == "hair_styling"]
    assert len(hair) == 12 and all(r["user_id"] == "anonymous" for r in hair)
    assert {m["request_id"] for m in models} == {r["request_id"] for r in rows}
    assert all(m["estimated_cost"] is not None and m["selected_model"] for m in models)
    # the generation's outcome and cost are the generation service's to record
    assert all(m["success"] is None and m["actual_cost"] is None for m in models)
    assert {r["circuit_breaker_state"] for r in rows} == {None}  # no LLM configured


async def test_rows_say_what_the_llm_breaker_was(
    postgres_db: str, make_client: MakeClient, tmp_path: Path, upstream: aioresponses
) -> None:
    """With an LLM classifier, circuit_breaker_state is the breaker as the request left it."""
    upstream.post(ENDPOINT, payload=completion(answer("hair_styling", 0.9)))  # the first call answers
    upstream.post(ENDPOINT, status=500, payload=ERROR, repeat=True)  # then the upstream dies
    client = await _db_client(
        make_client, postgres_db, tmp_path, intent_classifier="llm", circuit_breaker_failure_threshold=1, **LLM
    )
    for prompt in ("make my hair blonde with bangs", "a cat in the garden", "a dog on the beach"):
        await _process(client, prompt)
    writer = client.app[REQUEST_LOG]
    await wait_until(lambda: writer.stats.written == 3, timeout=10)
    rows = await _fetch(
        postgres_db, "SELECT circuit_breaker_state, intent_source FROM intent_classification_logs ORDER BY created_at"
    )
    assert [(r["circuit_breaker_state"], r["intent_source"]) for r in rows] == [
        ("closed", "llm"), ("open", "local"), ("open", "local"),
    ]  # fmt: skip


async def test_requests_that_end_without_a_result_are_logged_with_the_reason(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """A stream whose client leaves mid-classification and an overloaded /process each leave a row."""
    gated = GatedClassifier(RulesClassifier())
    client = await _db_client(
        make_client, postgres_db, tmp_path, classifier=gated,
        max_concurrent_classifications=1, classification_queue_timeout=0.1,
    )
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(STREAM), json={"prompt": "walk away from me"})
        await resp.content.readuntil(b"\n\n")  # the context event
        await asyncio.wait_for(gated.entered.wait(), 5)
        overloaded = await client.post(PROCESS, json={"prompt": "no slot for me"})
        assert overloaded.status == 503
        resp.close()
    writer = client.app[REQUEST_LOG]
    await wait_until(lambda: writer.stats.written == 2, timeout=10)
    rows = await _fetch(postgres_db, "SELECT * FROM intent_classification_logs ORDER BY outcome")
    assert [(r["outcome"], r["route"], r["prompt"], r["arm"]) for r in rows] == [
        ("client_disconnected", "stream", "walk away from me", "ai"),  # the arm: A/B counts them too
        ("overloaded", "process", "no slot for me", "ai"),
    ]
    assert all(r["classified_workflow"] == "unclassified" and not r["rate_limited"] for r in rows)
    assert await _count(postgres_db, "model_selection_logs") == 0


async def test_a_refusal_because_limits_are_unavailable_leaves_a_row(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """RATE_LIMIT_FAIL_MODE=closed with Redis down: the 503 is a request like any other, logged."""
    redis_server = RedisServer().start()
    try:
        client = await _db_client(make_client, postgres_db, tmp_path, redis_url=redis_server.url,
                                  rate_limit_fail_mode="closed")  # fmt: skip
        redis_server.stop()
        assert (await client.post(PROCESS, json={"prompt": "a red fox"})).status == 503
        await client.close()
    finally:
        redis_server.cleanup()
    rows = await _fetch(postgres_db, "SELECT * FROM intent_classification_logs")
    assert [(r["outcome"], r["route"], r["rate_limited"]) for r in rows] == [("rate_limit_unavailable", "process", False)]


async def test_a_stream_ended_by_shutdown_is_logged_as_such_not_as_the_clients_leaving(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    gated = GatedClassifier(RulesClassifier())
    client = await _db_client(make_client, postgres_db, tmp_path, classifier=gated, shutdown_grace_seconds=0.1)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(STREAM), json={"prompt": "stopped mid-way"})
        await asyncio.wait_for(gated.entered.wait(), 5)
        await client.close()  # the writer flushes what it holds as the gateway stops
        await resp.read()
    rows = await _fetch(postgres_db, "SELECT * FROM intent_classification_logs")
    assert [(r["outcome"], r["route"], r["prompt"], r["arm"]) for r in rows] == [
        ("shutting_down", "stream", "stopped mid-way", "ai")
    ]


@pytest.mark.parametrize("client_leaves", [False, True])
async def test_a_json_request_at_shutdown_is_logged_by_who_ended_it(
    postgres_db: str, make_client: MakeClient, tmp_path: Path, client_leaves: bool
) -> None:
    """Past the grace the gateway ends it (shutting_down); a client that leaves during the grace
    ended it itself (client_disconnected), as a stream's row says."""
    gated = GatedClassifier(RulesClassifier())
    client = await _db_client(make_client, postgres_db, tmp_path, classifier=gated,
                              shutdown_grace_seconds=1.0 if client_leaves else 0.1)  # fmt: skip
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.post(client.make_url(PROCESS), json={"prompt": "at shutdown"}))
        await asyncio.wait_for(gated.entered.wait(), 5)
        closing = asyncio.create_task(client.close())
        await asyncio.sleep(0.2)  # the grace has begun
        if client_leaves:
            pending.cancel()
        await asyncio.gather(pending, closing, return_exceptions=True)
    rows = await _fetch(postgres_db, "SELECT outcome, route FROM intent_classification_logs")
    outcome = "client_disconnected" if client_leaves else "shutting_down"
    assert [(r["outcome"], r["route"]) for r in rows] == [(outcome, "process")]


async def test_rate_limited_requests_are_logged(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """A 429 leaves one intent row flagged rate_limited (no prompt, no model), counted by the view."""
    client = await _db_client(make_client, postgres_db, tmp_path, rate_limit_requests_per_minute=3)
    statuses = [(await client.post(PROCESS, json={"prompt": "a red fox"})).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    await wait_until(lambda: client.app[REQUEST_LOG].stats.written == 5, timeout=10)
    assert await _counts(postgres_db) == (5, 3)
    await client.app[ANALYTICS].refresh()
    conn = await asyncpg.connect(postgres_db)
    try:
        refused = await conn.fetch("SELECT * FROM intent_classification_logs WHERE rate_limited")
        limited = await conn.fetchval("SELECT sum(rate_limited_count) FROM intent_analytics")
    finally:
        await conn.close()
    assert len(refused) == 2 and limited == 2
    described = {(r["classified_workflow"], r["route"], r["prompt"]) for r in refused}
    assert described == {("unclassified", "process", None)}


async def test_clients_gone_before_the_pipeline_starts_are_logged(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """A client that leaves while it sends its body, or while Redis decides its admission, leaves a
    client_disconnected row (no prompt: none was read), as one that leaves mid-stream does."""
    redis_server = RedisServer().start()
    try:
        client = await _db_client(make_client, postgres_db, tmp_path, redis_url=redis_server.url, redis_timeout=5.0)
        _, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"POST {PROCESS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n\r\n{\"prompt\": ".encode())  # fmt: skip
        await writer.drain()
        await asyncio.sleep(0.3)  # admitted, reading the body
        writer.close()
        pauser = redis.asyncio.Redis.from_url(redis_server.url)
        await pauser.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        with pytest.raises(TimeoutError):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
                await session.post(client.make_url(STREAM), json={"prompt": "too slow for me"})
        await pauser.execute_command("CLIENT", "UNPAUSE")
        await pauser.aclose()
        await wait_until(lambda: client.app[REQUEST_LOG].stats.written == 2, timeout=10)
        rows = await _fetch(postgres_db, "SELECT * FROM intent_classification_logs ORDER BY route")
        assert [(r["outcome"], r["route"], r["prompt"], r["rate_limited"]) for r in rows] == [
            ("client_disconnected", "process", None, False),
            ("client_disconnected", "stream", None, False),
        ]
    finally:
        redis_server.cleanup()


@pytest.mark.parametrize(("policy", "stored", "hashed"), [("hash", False, True), ("none", False, False)])
async def test_log_prompts_policy(
    postgres_db: str, make_client: MakeClient, tmp_path: Path, policy: str, stored: bool, hashed: bool
) -> None:
    """LOG_PROMPTS=hash keeps only a digest; none keeps neither."""
    client = await _db_client(make_client, postgres_db, tmp_path, log_prompts=policy)
    await _process(client, "my secret prompt")
    await wait_until(lambda: client.app[REQUEST_LOG].stats.written == 1, timeout=10)
    [row] = await _fetch(postgres_db, "SELECT prompt, prompt_sha256 FROM intent_classification_logs")
    assert (row["prompt"] is not None) is stored
    assert (row["prompt_sha256"] is not None) is hashed


async def test_network_cut_loses_nothing(postgres_db: str, make_client: MakeClient, tmp_path: Path) -> None:
    """During a 3-second cut requests are answered without waiting; afterwards every row is there."""
    proxy = TcpProxy()
    await proxy.start()
    via_proxy = postgres_db.replace(":5432/", f":{proxy.port}/")
    client = await _db_client(make_client, via_proxy, tmp_path)
    writer = client.app[REQUEST_LOG]
    for _ in range(5):
        await _process(client)
    await wait_until(lambda: writer.stats.written == 5, timeout=10)

    await proxy.stop()
    loop = asyncio.get_running_loop()
    cut_ends = loop.time() + 3.0
    during = 0
    while loop.time() < cut_ends:
        await _process(client)
        during += 1
        await asyncio.sleep(0.02)
    # All answered while Postgres was still unreachable, and the rows are waiting, not lost.
    health = await (await client.get("/health")).json()
    assert health["dependencies"]["postgres"]["state"] == "down"
    assert writer.connected is False and writer.buffered == during and during > 20

    await proxy.start()
    await wait_until(lambda: writer.buffered == 0 and writer.stats.written == 5 + during, timeout=20)
    assert await _counts(postgres_db) == (5 + during, 5 + during)
    assert writer.stats.spilled == 0 and writer.stats.dropped == 0
    await client.close()
    await proxy.stop()


async def test_a_hung_database_holds_health_and_requests_no_longer_than_their_timeouts(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """Postgres stops answering but keeps its connections (a frozen host, a network black hole):
    /health says down within its 0.5 s probe and an @tag lookup fails over within its 2 s, though
    asyncpg holds a cancelled query's connection for up to command_timeout (30 s)."""
    proxy = TcpProxy()
    await proxy.start()
    client = await _db_client(make_client, postgres_db.replace(":5432/", f":{proxy.port}/"), tmp_path)
    assert (await (await client.get("/health")).json())["dependencies"]["postgres"]["state"] == "ok"
    proxy.pause()
    loop = asyncio.get_running_loop()
    for _ in range(2):
        started = loop.time()
        health = await (await client.get("/health")).json()
        assert health["dependencies"]["postgres"]["state"] == "down" and loop.time() - started < 3
    started = loop.time()
    resp = await client.post(PROCESS, json={"prompt": "put @sarah in a red dress"})
    assert resp.status == 200 and loop.time() - started < 4  # the prompt stage's fallback answers
    proxy.resume()
    await client.close()
    await proxy.stop()


async def test_a_hung_database_holds_the_writer_and_the_shutdown_no_longer_than_their_bounds(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """Postgres frozen with the connections open: a write gives up at its 5 s and says the
    database is unreachable (it stalled ~35 s, /health saying all was well), and stopping takes
    seconds: the key store's pool closed with no bound, and a SIGTERM took 4 minutes."""
    proxy = TcpProxy()
    await proxy.start()
    client = await _db_client(make_client, postgres_db.replace(":5432/", f":{proxy.port}/"), tmp_path,
                              gateway_api_keys=None)  # fmt: skip
    writer = client.app[REQUEST_LOG]
    await _process(client)
    await wait_until(lambda: writer.stats.written == 1, timeout=10)
    proxy.pause()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await _process(client)
    await wait_until(lambda: writer.stats.failed_writes >= 1, timeout=15)
    assert loop.time() - started < 8 and writer.connected is False
    started = loop.time()
    await client.close()
    assert loop.time() - started < 15  # the writer's last try (5 s), then each pool's bounded close
    assert (writer.stats.spilled, writer.stats.dropped) == (1, 0)  # the row waits in the spill file
    proxy.resume()
    await proxy.stop()


async def test_overflow_spills_to_file_and_replays(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """Beyond the buffer bound rows go to the spill file; once Postgres is back they are written."""
    proxy = TcpProxy()
    await proxy.start()
    via_proxy = postgres_db.replace(":5432/", f":{proxy.port}/")
    client = await _db_client(
        make_client, via_proxy, tmp_path, analytics_buffer_rows=5, analytics_batch_rows=4
    )
    writer = client.app[REQUEST_LOG]
    await _process(client)
    await wait_until(lambda: writer.stats.written == 1, timeout=10)
    await proxy.stop()
    for _ in range(30):
        await _process(client)
    await wait_until(lambda: writer.stats.spilled >= 25, timeout=10)
    assert writer.buffered <= 5
    assert (tmp_path / "spill.jsonl").exists()

    await proxy.start()
    try:
        await wait_until(lambda: writer.stats.written == 31, timeout=20)
    except TimeoutError:
        raise AssertionError(writer.snapshot()) from None
    assert await _counts(postgres_db) == (31, 31)
    assert writer.stats.replayed == writer.stats.spilled and writer.stats.duplicates == 0
    assert not any(os.scandir(tmp_path))  # no spill file left, none rejected
    metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert metrics["request_log"]["written"] == 31 and metrics["request_log"]["spilled"] >= 25
    prometheus = await (await client.get("/metrics")).text()
    assert 'gateway_request_log_rows_total{outcome="written"} 31' in prometheus
    await client.close()
    await proxy.stop()


async def test_shutdown_flushes_the_buffer(postgres_db: str, make_client: MakeClient, tmp_path: Path) -> None:
    """Rows still buffered when the gateway stops are written before it exits."""
    client = await _db_client(make_client, postgres_db, tmp_path, analytics_flush_seconds=60.0)
    for _ in range(7):
        await _process(client)
    assert client.app[REQUEST_LOG].buffered == 7
    await client.close()
    assert await _counts(postgres_db) == (7, 7)


async def test_shutdown_without_postgres_spills_and_next_start_replays(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """Stopping during an outage keeps the rows in the spill file; the next gateway writes them."""
    proxy = TcpProxy()
    await proxy.start()
    via_proxy = postgres_db.replace(":5432/", f":{proxy.port}/")
    (tmp_path / "spill.jsonl").touch(mode=0o644)  # left readable by an earlier version
    first = await _db_client(make_client, via_proxy, tmp_path, analytics_flush_seconds=60.0)
    await proxy.stop()
    for _ in range(6):
        await _process(first)
    await first.close()
    assert len((tmp_path / "spill.jsonl").read_bytes().splitlines()) == 6
    assert (tmp_path / "spill.jsonl").stat().st_mode & 0o777 == 0o600  # users' prompts: owner only

    second = await _db_client(make_client, postgres_db, tmp_path)
    await wait_until(lambda: second.app[REQUEST_LOG].stats.replayed == 6, timeout=10)
    assert await _counts(postgres_db) == (6, 6)
    assert not (tmp_path / "spill.jsonl").exists()


def _entry(**overrides: Any) -> LogEntry:
    fields: dict[str, Any] = {
        "request_id": uuid.uuid4(), "created_at": datetime.now(UTC), "user_id": "u", "trace_id": "t",
        "prompt": "p", "prompt_sha256": None, "route": "process", "classified_workflow": "image_generation",
        "confidence": 0.9, "processing_time_ms": 2, "used_fallback": False, "cache_hit": False,
        "rate_limited": False, "intent_source": "rules", "arm": "ai", "selected_model": "m",
        "fallback_models": ["a", "b"], "estimated_cost": 0.01, "estimated_time": 5,
    }
    return LogEntry(**(fields | overrides))


async def test_replaying_rows_already_written_stores_them_once(postgres_db: str, tmp_path: Path) -> None:
    """A spill file replayed after its rows were committed (crash before unlink) adds nothing."""
    pool = await create_pool(postgres_db)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        entries = [_entry() for _ in range(5)]
        writer = LogWriter(pool, spill_path=tmp_path / "spill.jsonl", flush_seconds=0.02)
        for e in entries:
            writer.enqueue(e)
        await writer.close()
        await writer._spill([*entries, _entry()])  # the same five again, plus one new row
        writer = LogWriter(pool, spill_path=tmp_path / "spill.jsonl", flush_seconds=0.02)
        writer.start()
        await wait_until(lambda: writer.stats.replayed == 6, timeout=10)
        await writer.close()
    finally:
        await pool.close()
    assert (writer.stats.written, writer.stats.duplicates) == (1, 5)
    assert await _counts(postgres_db) == (6, 6)


async def test_a_postgres_slower_than_the_traffic_spills_past_the_buffer_bound(
    postgres_db: str, tmp_path: Path
) -> None:
    """Reachable but slow (here: a batch held behind a table lock) is no outage, yet rows pile up
    all the same: past `buffer_rows` the newest go to the spill file, and all are stored in the end.
    (They stayed in memory: 2,000+ rows at a bound of 20, in a QA run.)"""
    pool = await create_pool(postgres_db)
    blocker = await asyncpg.connect(postgres_db)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        writer = LogWriter(pool, spill_path=tmp_path / "spill.jsonl", batch_rows=10, buffer_rows=20,
                           flush_seconds=0.02, write_timeout=30.0)  # fmt: skip
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE intent_classification_logs IN ACCESS EXCLUSIVE MODE")
        writer.start()
        for _ in range(10):
            writer.enqueue(_entry())
        await wait_until(lambda: len(writer._inflight) == 10, timeout=5)  # held by the lock
        for _ in range(100):
            writer.enqueue(_entry())
        await locked.rollback()  # the batch goes through: Postgres was only slow
        await wait_until(lambda: writer.stats.written == 110, timeout=20)  # replayed rows included
        assert writer.stats.spilled == 80  # 100 waiting once the batch was in, at a bound of 20
        await writer.close()
    finally:
        await blocker.close()
        await pool.close()
    assert await _counts(postgres_db) == (110, 110)
    assert writer.stats.dropped == 0


def test_a_spill_path_that_cannot_be_written_is_named_before_it_is_needed(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()
    assert spill_path_problem(tmp_path / "var" / "spill.jsonl") is None  # made as needed
    problem = spill_path_problem(tmp_path / "a-file" / "spill.jsonl")
    assert problem is not None and "cannot write in" in problem


async def test_the_gateway_refuses_to_start_with_an_unwritable_spill_path(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    (tmp_path / "a-file").touch()
    with pytest.raises(ConfigError, match="ANALYTICS_SPILL_PATH"):
        await make_client(database_url=postgres_db, analytics_spill_path=str(tmp_path / "a-file" / "spill.jsonl"))


async def test_a_batch_failing_halfway_keeps_nothing_and_only_the_bad_row_is_set_aside(
    postgres_db: str, tmp_path: Path
) -> None:
    """A COPY of a batch fails: that attempt leaves no row in either table; the batch is then
    split until the row Postgres refuses is alone, and only it goes to the .rejected file."""
    pool = await create_pool(postgres_db)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        writer = LogWriter(pool, spill_path=tmp_path / "spill.jsonl", batch_rows=10)
        good = [_entry() for _ in range(3)]
        poisoned = [_entry(), _entry(error_message="NUL \x00 is not text to Postgres")]
        for e in poisoned:
            writer.enqueue(e)
        await writer.close()
        for e in good:
            writer.enqueue(e)
        await writer.close()
    finally:
        await pool.close()
    assert await _counts(postgres_db) == (4, 4)
    assert writer.stats.rejected == 1 and writer.stats.written == 4 and writer.stats.duplicates == 0
    (rejected,) = (tmp_path / "spill.jsonl.rejected").read_bytes().splitlines()
    assert b"is not text to Postgres" in rejected


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
         True),  # a connection that died mid-COPY, as seen with pg_terminate_backend under load
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), True),
        (asyncpg.exceptions.UndefinedTableError("no table"), True),  # not migrated yet
        (ConnectionRefusedError(), True),
        (asyncpg.exceptions.CharacterNotInRepertoireError("NUL"), False),  # SQLSTATE 22
        (asyncpg.exceptions.NotNullViolationError("null"), False),  # SQLSTATE 23
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), False),
        # a ValueError too, but a connection setting: the rows wait for it to be fixed
        (asyncpg.exceptions.ClientConfigurationError("invalid sslmode"), True),
    ],
)
def test_only_rows_postgres_or_the_driver_refuse_are_set_aside(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_prompt_digest_is_keyed_when_a_key_is_configured() -> None:
    """With LOG_PROMPT_HASH_KEY the digest is an HMAC: hashing guesses no longer finds the prompt."""
    plain = prompt_columns("a cat", "hash")
    keyed = prompt_columns("a cat", "hash", b"secret")
    assert plain == (None, hashlib.sha256(b"a cat").hexdigest())
    assert keyed == (None, hmac.new(b"secret", b"a cat", hashlib.sha256).hexdigest())
    assert keyed != plain and prompt_columns("a cat", "full", b"secret")[0] == "a cat"


async def test_a_schema_lost_while_running_is_migrated_again_and_no_row_is_lost(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """The database is emptied under a running gateway (dropped and created again, a restore):
    /health says the log is degraded while rows buffer, upkeep migrates again, rows follow."""
    client = await _db_client(make_client, postgres_db, tmp_path, analytics_refresh_seconds=0.1)
    writer = client.app[REQUEST_LOG]
    assert (await _process(client)).status == 200
    await wait_until(lambda: writer.stats.written == 1, timeout=10)

    await _drop_under_the_gateway(postgres_db, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    for _ in range(3):
        assert (await _process(client)).status == 200
    await wait_until(lambda: writer.stats.written == 4, timeout=15)
    assert await _counts(postgres_db) == (3, 3)  # the three sent after the schema was lost
    assert writer.stats.rejected == writer.stats.dropped == 0
    health = await (await client.get("/health")).json()
    assert health["dependencies"]["postgres"]["state"] == "ok"


async def test_a_view_dropped_by_hand_is_retried_once_a_round_not_in_a_loop(
    postgres_db: str, make_client: MakeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A view dropped by hand (its migration still recorded, so migrating again adds nothing):
    upkeep retries at once only once in a row, then waits its round. Retrying at once every time
    sent refreshes to Postgres as fast as round trips allowed (58,937 in 0.5 s, a reviewer's run)."""
    client = await _db_client(make_client, postgres_db, tmp_path, analytics_refresh_seconds=0.2)
    assert (await _process(client)).status == 200
    await _drop_under_the_gateway(postgres_db, "DROP MATERIALIZED VIEW cost_analytics")
    with caplog.at_level("WARNING", logger="gateway.analytics.service"):
        await asyncio.sleep(1.5)  # about seven rounds, two tries each (the round's, the retry)
    missing = [r for r in caplog.records if "analytics schema missing" in r.getMessage()]
    assert 1 <= len(missing) <= 20


async def test_health_says_degraded_while_postgres_answers_but_refuses_the_log(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    client = await _db_client(make_client, postgres_db, tmp_path, database_migrate_on_start=False)
    assert (await _process(client)).status == 200  # no tables: the row waits
    await wait_until(lambda: client.app[REQUEST_LOG].connected is False, timeout=10)
    health = await (await client.get("/health")).json()
    assert (health["status"], health["dependencies"]["postgres"]["state"]) == ("degraded", "degraded")


async def test_starts_while_postgres_answers_but_takes_no_connections(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """A database at its connection limit (53300) or closed to connections (55000) at start-up is
    waited for like one that is down: the gateway starts, answers, and keeps the row. (An env
    key: with the keys table the only key source, its requests would wait for it too, as 503s.)"""
    name = postgres_db.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres_db.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        client = await _db_client(make_client, postgres_db, tmp_path, gateway_api_keys="ann:k0123456789abcdef")
        assert (await _process(client, Authorization="Bearer k0123456789abcdef")).status == 200
        await wait_until(lambda: client.app[REQUEST_LOG].connected is False, timeout=10)
        assert client.app[REQUEST_LOG].buffered == 1
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
