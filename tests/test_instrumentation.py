"""Client spans for outside calls: Redis commands and aiohttp client requests, inside the request's trace."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.exceptions import ResponseError

from gateway.appkeys import REDIS, TRACING
from gateway.redis import RedisConnection
from tests.conftest import MakeClient

REDIS_URL = "redis://127.0.0.1:6379/0"


async def traced_redis(make_client: MakeClient) -> tuple[web.Application, RedisConnection, InMemorySpanExporter]:
    """An app on the local Redis (its own key prefix) whose finished spans the exporter keeps."""
    client = await make_client(redis_url=REDIS_URL, redis_key_prefix=f"test-otel-{uuid.uuid4().hex[:8]}:")
    app = client.server.app
    exporter = InMemorySpanExporter()
    app[TRACING].add_span_processor(SimpleSpanProcessor(exporter))
    connection = app[REDIS]
    assert connection is not None
    return app, connection, exporter


async def test_redis_commands_are_client_spans_of_the_current_trace(make_client: MakeClient) -> None:
    """A command on app[REDIS] inside a span becomes its CLIENT child; a background ping makes no trace."""
    app, connection, exporter = await traced_redis(make_client)
    await connection.client.ping()  # no current span: a background call, not kept
    with app[TRACING].tracer.start_as_current_span("request") as parent:
        await connection.client.ping()
    (request, ping) = sorted(exporter.get_finished_spans(), key=lambda s: s.kind.value)
    assert ping.kind is SpanKind.CLIENT and ping.name == "PING"
    assert ping.attributes is not None and ping.attributes["db.system"] == "redis"
    assert ping.attributes["db.statement"] == "PING"
    assert ping.attributes["net.peer.name"] == "127.0.0.1" and ping.attributes["net.peer.port"] == 6379
    assert ping.parent is not None and ping.parent.span_id == parent.get_span_context().span_id
    assert request.name == "request"


async def test_a_failed_redis_command_is_an_error_span_without_its_arguments(make_client: MakeClient) -> None:
    """Arguments (keys, prompts) stay out of the span's attributes; the error is its status."""
    app, connection, exporter = await traced_redis(make_client)
    with app[TRACING].tracer.start_as_current_span("request"), pytest.raises(ResponseError):
        await connection.client.execute_command("NOSUCHCOMMAND", "secret-argument")
    (failed,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert failed.name == "NOSUCHCOMMAND" and failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["db.statement"] == "NOSUCHCOMMAND ?"
    assert "secret-argument" not in repr(dict(failed.attributes))


async def test_a_script_the_server_has_not_cached_yet_is_no_error_in_the_trace(make_client: MakeClient) -> None:
    """The first EVALSHA of a script after Redis starts answers NOSCRIPT and redis-py loads it:
    a successful request's trace said error: true."""
    app, connection, exporter = await traced_redis(make_client)
    script = connection.client.register_script(f"return '{uuid.uuid4().hex}'")  # new to this server
    with app[TRACING].tracer.start_as_current_span("request"):
        await script()
    calls = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in calls] == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
    assert all(s.status.status_code is StatusCode.UNSET for s in calls)
    assert calls[0].attributes is not None and calls[0].attributes["db.redis.noscript"] is True


async def test_rate_limit_admission_and_charge_are_spans_of_the_request(make_client: MakeClient) -> None:
    """Batched limiter scripts carry no request's trace, so each request has its own wait as a span."""
    client = await make_client(redis_url=REDIS_URL, redis_key_prefix=f"test-otel-{uuid.uuid4().hex[:8]}:")
    exporter = InMemorySpanExporter()
    client.server.app[TRACING].add_span_processor(SimpleSpanProcessor(exporter))
    response = await client.post("/api/v1/enhanced/process", json={"prompt": "a red fox"})
    assert response.status == 200
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    limiter = sorted((s for s in spans if s.name.startswith("rate_limit.")), key=lambda s: s.start_time or 0)
    assert [s.name for s in limiter] == ["rate_limit.admit", "rate_limit.charge"]
    for span in limiter:
        assert span.kind is SpanKind.CLIENT and span.attributes == {"db.system": "redis"}
        assert span.context is not None and span.context.trace_id == server.context.trace_id
    assert not [s for s in spans if s.name == "EVALSHA"]  # the batch itself is nobody's child


async def test_client_session_spans_inject_traceparent(make_client: MakeClient, aiohttp_server: Any) -> None:
    """A ClientSession with the app's trace configs sends traceparent and records a CLIENT span."""
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.json_response({"ok": True})

    server_app = web.Application()
    server_app.router.add_get("/v1/thing", upstream)
    server = await aiohttp_server(server_app)
    client = await make_client()
    tracing = client.server.app[TRACING]
    exporter = InMemorySpanExporter()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    async with aiohttp.ClientSession(trace_configs=tracing.client_trace_configs()) as session:
        with tracing.tracer.start_as_current_span("request") as parent:
            async with session.get(server.make_url("/v1/thing")) as response:
                assert response.status == 200
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    (call,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id
    assert call.context is not None
    assert [header[:-2] for header in seen] == [f"00-{trace_id}-{call.context.span_id:016x}-"]


async def test_postgres_queries_are_client_spans_of_the_current_trace(make_client: MakeClient) -> None:
    """A query on a connection with the tracing hook is a CLIENT span under the current span only."""
    import asyncio

    import asyncpg

    client = await make_client()
    tracing = client.server.app[TRACING]
    exporter = InMemorySpanExporter()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await tracing.instrument_postgres(connection)
        await connection.fetchval("SELECT 1")  # no current span: background work, not kept
        with tracing.tracer.start_as_current_span("request") as parent:
            assert await connection.fetchval("SELECT $1::int + 1", 41) == 42
            with pytest.raises(asyncpg.PostgresError):
                await connection.execute("SELECT * FROM no_such_table_here")
        await asyncio.sleep(0)  # asyncpg calls its query loggers soon, not at once
    finally:
        await connection.close()
    queries = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in queries] == ["SELECT", "SELECT"]
    ok, failed = queries
    assert ok.attributes is not None and ok.attributes["db.system"] == "postgresql"
    assert ok.attributes["db.statement"] == "SELECT $1::int + 1" and ok.attributes["db.name"] == "postgres"
    assert ok.parent is not None and ok.parent.span_id == parent.get_span_context().span_id
    assert ok.end_time is not None and ok.start_time is not None and ok.end_time >= ok.start_time
    assert failed.status.status_code.name == "ERROR" and failed.events[0].name == "exception"


async def traced_llm(make_client: MakeClient, **settings: Any) -> tuple[Any, InMemorySpanExporter]:
    """A gateway classifying with the (mocked) LLM, whose finished spans the exporter keeps."""
    from tests.test_llm_app import LLM

    client = await make_client(intent_classifier="llm", **{**LLM, **settings})
    exporter = InMemorySpanExporter()
    client.server.app[TRACING].add_span_processor(SimpleSpanProcessor(exporter))
    return client, exporter


async def test_llm_calls_are_client_spans_under_the_intent_stage(
    make_client: MakeClient, upstream: Any
) -> None:
    """Each upstream chat call is a CLIENT span under stage.intent, with model and token counts."""
    from tests.test_llm import ENDPOINT, answer, completion

    upstream.post(ENDPOINT, payload=completion(answer("hair_styling", 0.93)), repeat=True)
    client, exporter = await traced_llm(make_client)
    response = await client.post("/api/v1/enhanced/process", json={"prompt": "make my hair blonde"})
    assert (await response.json())["intent_source"] == "llm"
    named = {s.name: s for s in exporter.get_finished_spans()}
    chat, intent = named["chat gpt-4o-mini"], named["stage.intent"]
    assert chat.kind is SpanKind.CLIENT and intent.context is not None
    assert chat.parent is not None and chat.parent.span_id == intent.context.span_id
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 120
    assert chat.attributes["gen_ai.usage.output_tokens"] == 30


async def test_an_llm_call_cut_by_the_deadline_is_an_error_span_not_a_cancelled_one(
    make_client: MakeClient, upstream: Any
) -> None:
    """A slow upstream, the commonest LLM failure, shows when traces are searched for errors, as
    a 500 does: the deadline's cancellation is not a client that went away."""
    from aioresponses import CallbackResult

    from tests.test_llm import ENDPOINT, answer, completion

    async def hang(url: Any, **kwargs: Any) -> CallbackResult:
        await asyncio.sleep(5)
        return CallbackResult(payload=completion(answer()))

    upstream.post(ENDPOINT, callback=hang)
    client, exporter = await traced_llm(make_client, classification_timeout=0.2)
    response = await client.post("/api/v1/enhanced/process", json={"prompt": "make my hair blonde"})
    assert (await response.json())["fallback_used"] is True
    chat = next(s for s in exporter.get_finished_spans() if s.name == "chat gpt-4o-mini")
    assert chat.status.status_code.name == "ERROR" and chat.status.description == "TimeoutError"
    assert chat.attributes is not None and "cancelled" not in chat.attributes  # nobody left: it failed
    assert chat.events[0].attributes is not None
    assert chat.events[0].attributes["exception.message"] == "no answer within 0.2s"
    trace = await (await client.get(f"/debug/traces/{response.headers['X-Trace-Id']}")).json()
    assert trace["error"] is True
    # the intent stage fell back (the local classifier answered), the model stage did not
    stages = {s.name: s.attributes or {} for s in exporter.get_finished_spans() if s.name.startswith("stage.")}
    assert stages["stage.intent"]["fallback_used"] is True and stages["stage.model"]["fallback_used"] is False
    prometheus = await (await client.get("/metrics")).text()
    assert 'gateway_stage_duration_seconds_count{stage="intent",outcome="fallback"} 1' in prometheus


async def test_a_failed_llm_call_says_what_the_upstream_did(make_client: MakeClient, upstream: Any) -> None:
    """Each attempt's span names the SDK's error (a 500 here, then a 429), not only the label the
    classifier keeps for its metrics."""
    from tests.test_llm import ENDPOINT

    upstream.post(ENDPOINT, status=500, payload={"error": {"message": "boom"}})
    upstream.post(ENDPOINT, status=429, payload={"error": {"message": "slow down"}}, repeat=True)
    client, exporter = await traced_llm(make_client)
    assert (await (await client.post("/api/v1/enhanced/process", json={"prompt": "a cat"})).json())["fallback_used"]
    chats = [s for s in exporter.get_finished_spans() if s.name == "chat gpt-4o-mini"]
    assert [s.status.description for s in chats][:2] == ["InternalServerError", "RateLimitError"]
    assert chats[0].events[0].attributes is not None
    assert "boom" in str(chats[0].events[0].attributes["exception.message"])


async def test_an_llm_answer_that_is_no_answer_is_an_error_span_and_the_stage_says_why(
    make_client: MakeClient, upstream: Any
) -> None:
    """A 200 whose content is prose is a failed call (the request falls back): its span was OK,
    and the trace said nothing of why the intent stage fell back, nor did it when the circuit
    was open and no call was made at all."""
    from tests.test_llm import ENDPOINT, completion

    upstream.post(ENDPOINT, payload=completion("sorry, I cannot help with that"))
    upstream.post(ENDPOINT, status=500, repeat=True)  # then the upstream fails: the circuit opens
    client, exporter = await traced_llm(make_client, circuit_breaker_failure_threshold=1)
    response = await client.post("/api/v1/enhanced/process", json={"prompt": "make my hair blonde"})
    assert (await response.json())["fallback_used"] is True
    chat = next(s for s in exporter.get_finished_spans() if s.name == "chat gpt-4o-mini")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes is not None and chat.attributes["gen_ai.usage.output_tokens"] == 30  # still spent
    trace = await (await client.get(f"/debug/traces/{response.headers['X-Trace-Id']}")).json()
    assert trace["error"] is True
    await client.post("/api/v1/enhanced/process", json={"prompt": "make my hair red"})  # a 500: opens
    exporter.clear()
    await client.post("/api/v1/enhanced/process", json={"prompt": "make my hair blonde please"})
    names = [s.name for s in exporter.get_finished_spans()]
    intent = next(s for s in exporter.get_finished_spans() if s.name == "stage.intent")
    assert "chat gpt-4o-mini" not in names  # the open circuit made no call
    assert intent.attributes is not None and intent.attributes["outcome"] == "fallback"
    assert "circuit_open" in str(intent.attributes["fallback_reason"])


async def test_each_outside_call_is_a_child_of_the_span_current_when_it_was_made(make_client: MakeClient) -> None:
    """Stage spans become current in turn: the intent cache's Redis commands are children of
    stage.intent; admission (before the stages) and the cost charge (after them, in the
    handler) are the request's own children, not a stage's that ended before them."""
    client = await make_client(redis_url=REDIS_URL, redis_key_prefix=f"test-otel-{uuid.uuid4().hex[:8]}:")
    exporter = InMemorySpanExporter()
    client.server.app[TRACING].add_span_processor(SimpleSpanProcessor(exporter))
    response = await client.post("/api/v1/enhanced/stream", json={"prompt": "a red fox in the snow"})
    assert response.status == 200 and "event: done" in await response.text()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    by_id = {s.context.span_id: s for s in spans if s.context is not None}

    def parent_name(name: str) -> set[str]:
        return {by_id[s.parent.span_id].name for s in spans if s.name == name and s.parent is not None}

    stages = [s for s in spans if s.name.startswith("stage.")]
    assert {s.name for s in stages} == {"stage.context", "stage.intent", "stage.model", "stage.prompt"}
    assert {by_id[s.parent.span_id].name for s in stages if s.parent is not None} == {server.name}
    assert parent_name("rate_limit.admit") == parent_name("rate_limit.charge") == {server.name}
    cache_calls = [s for s in spans if s.kind is SpanKind.CLIENT and not s.name.startswith("rate_limit.")]
    assert cache_calls, "the intent cache asked Redis"
    assert {by_id[s.parent.span_id].name for s in cache_calls if s.parent is not None} == {"stage.intent"}
    assert len(by_id) == len(spans)  # every span has an id of its own
