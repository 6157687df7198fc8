"""The SSE endpoint: byte format, stage order, errors in-band, disconnects, overload."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.appkeys import SLOTS, STATS, TRACING
from gateway.sse import EventStream
from pipeline.classifiers.rules import RulesClassifier
from tests.conftest import FailingClassifier, GatedClassifier, MakeClient, wait_until
from tests.sse import parse_events

STREAM = "/api/v1/enhanced/stream"
STAGES = ["context", "intent", "model", "prompt", "done"]


async def test_stream_emits_each_stage_in_order_then_done(client: Any) -> None:
    """Events arrive as context, intent, model, prompt, done with increasing ids; done's is "done"."""
    resp = await client.post(STREAM, json={"prompt": "change my hair to blonde with bangs"})
    assert resp.status == 200
    events = parse_events(await resp.read())
    assert [e.event for e in events] == STAGES
    assert [e.id for e in events] == ["1", "2", "3", "4", "done"]
    assert events[1].data["workflow_type"] == "hair_styling"
    assert events[2].data["model_id"] == "flux-kontext-apps/change-haircut"


async def test_every_event_carries_elapsed_ms_and_the_trace_id(client: Any) -> None:
    """elapsed_ms never decreases; the trace id matches the response header."""
    resp = await client.post(STREAM, json={"prompt": "a cat playing in the garden"})
    events = parse_events(await resp.read())
    elapsed = [e.data["elapsed_ms"] for e in events]
    assert elapsed == sorted(elapsed) and all(isinstance(ms, float) for ms in elapsed)
    assert {e.data["trace_id"] for e in events} == {resp.headers["X-Trace-Id"]}


@pytest.mark.parametrize("path", [STREAM, "/api/v1/enhanced/process"])
async def test_elapsed_time_counts_from_the_requests_arrival(client: Any, path: str) -> None:
    """A body that takes 0.3 s to arrive (or a slow limiter) is part of the request's time: the
    clock used to start in the handler, after both, and a request that took half a second
    said 6 ms in its events, its processing_time and its analytics row."""

    async def slow_body() -> Any:
        yield b'{"prompt": "a cat playing'
        await asyncio.sleep(0.3)
        yield b' in the garden"}'

    resp = await client.post(path, data=slow_body(), headers={"Content-Type": "application/json"})
    assert resp.status == 200
    if path == STREAM:
        events = parse_events(await resp.read())
        assert events[0].data["elapsed_ms"] >= 300
        processing_time = events[-1].data["processing_time"]
    else:
        processing_time = (await resp.json())["processing_time"]
    assert processing_time >= 0.3


async def test_stream_headers_disable_caching_and_proxy_buffering(client: Any) -> None:
    """Proxies must pass events through at once; clients learn how often a waiting stream beats."""
    resp = await client.post(STREAM, json={"prompt": "a red fox"})
    await resp.read()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["X-Heartbeat-Seconds"] == "15"  # SSE_HEARTBEAT_SECONDS' default
    assert "Content-Encoding" not in resp.headers


async def test_done_event_is_exactly_the_process_json(client: Any) -> None:
    """The stream's final event and /process answer with the same fields and values."""
    body = {"prompt": "put @sarah in this red dress", "working_image_url": "https://a.supabase.co/p.jpg"}
    done = parse_events(await (await client.post(STREAM, json=body)).read())[-1].data
    processed = await (await client.post("/api/v1/enhanced/process", json=body)).json()
    assert set(done) == set(processed)
    # The same prompt twice: the second answer comes from the intent cache.
    assert (done.pop("cache_hit"), processed.pop("cache_hit")) == (False, True)
    for volatile in ("elapsed_ms", "processing_time", "trace_id"):
        done.pop(volatile), processed.pop(volatile)
    assert done == processed


async def test_get_stream_reads_the_query_string(client: Any) -> None:
    """EventSource cannot POST: GET takes prompt, working_image_url and quality."""
    resp = await client.get(
        STREAM,
        params={
            "prompt": "animate this sunset",
            "working_image_url": "https://a.supabase.co/sunset.jpg",
            "quality": "quality",
        },
    )
    events = parse_events(await resp.read())
    assert [e.event for e in events] == STAGES
    assert events[0].data["preferences"]["quality"] == "quality"
    assert events[-1].data["workflow_type"] == "image_to_video"


async def test_get_stream_takes_uploaded_images_as_a_repeated_parameter(client: Any) -> None:
    """The POST body's uploaded_image_urls, for EventSource: one parameter per image (a URL may
    hold a comma). Before, a GET stream could not say an image had just been uploaded."""
    uploads = ["https://a.supabase.co/me.jpg", "https://a.supabase.co/me,2.jpg"]
    query = [("prompt", "change my hair to blonde with bangs"), *(("uploaded_image_url", u) for u in uploads)]
    events = parse_events(await (await client.get(STREAM, params=query)).read())
    assert events[0].data["uploaded_images"] == uploads
    assert events[-1].data["metadata"]["image_missing"] is False
    for name in ("uploaded_image_urls", "uploaded_image_url[]"):  # the body's name, PHP-style
        plural = await client.get(STREAM, params=[("prompt", "a cat"), (name, uploads[0])])
        assert parse_events(await plural.read())[0].data["uploaded_images"] == uploads[:1], name
    bad = await client.get(STREAM, params=[("prompt", "a cat"), ("uploaded_image_url", "ftp://x/y.jpg")])
    assert bad.status == 422 and (await bad.json())["field"] == "uploaded_image_urls[0]"


async def test_an_eventsource_reconnecting_after_done_is_told_to_stop(client: Any) -> None:
    """Browsers reconnect to an EventSource whenever its stream ends: after `done` the gateway
    answers 204, which stops them, instead of running (and charging) the request again. A
    stream cut off before `done` is sent again in full."""
    query = {"prompt": "animate this sunset"}
    finished = await client.get(STREAM, params=query, headers={"Last-Event-ID": "done"})
    assert finished.status == 204 and await finished.read() == b""
    cut_off = await client.get(STREAM, params=query, headers={"Last-Event-ID": "3"})
    assert [e.event for e in parse_events(await cut_off.read())] == STAGES
    stats = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert stats["classifications"] == 1  # the cut-off one's; the 204 ran nothing
    assert stats["responses_by_status"] == {"204": 1, "200": 1}
    usage = await (await client.get("/api/v1/enhanced/usage")).json()
    assert usage["requests_last_minute"] == 1, usage  # nor did it use the user's quota


async def test_get_stream_takes_the_longest_prompt_in_any_script(client: Any) -> None:
    """2,000 characters of 4-byte UTF-8 percent-encode to 24,000 bytes of request line."""
    prompt = "\U0001f30a" * 1990 + " waves"
    resp = await client.get(STREAM, params={"prompt": prompt})
    assert resp.status == 200, await resp.text()
    assert [e.event for e in parse_events(await resp.read())] == STAGES


async def test_invalid_stream_request_is_refused_before_the_stream_starts(client: Any) -> None:
    """A bad GET query gets a 422 JSON error, not an event stream."""
    resp = await client.get(STREAM, params={"prompt": "x", "quality": "ultra"})
    assert resp.status == 422
    assert resp.content_type == "application/json"
    assert (await resp.json())["field"] == "quality"


async def test_a_query_whose_escapes_are_not_utf8_is_400_not_a_replacement_character(client: Any) -> None:
    """ "caf%E9" (Latin-1 \u00e9) would reach the classifier as "caf\ufffd"; the POST refuses such
    bytes as malformed JSON, and the GET refuses them too."""
    resp = await client.get(f"{STREAM}?prompt=caf%E9+latte+art")
    assert (resp.status, resp.content_type) == (400, "application/json")
    assert (await resp.json())["error"] == "malformed_query"


async def test_get_stream_says_which_values_a_flag_takes(client: Any) -> None:
    resp = await client.get(STREAM, params={"prompt": "a cat", "use_ai_classification": "maybe"})
    assert resp.status == 422
    assert await resp.json() == {
        "error": "validation_error", "field": "use_ai_classification",
        "detail": "use_ai_classification must be true or false (or 1 or 0, on or off, yes or no)",
    }
    off = await client.get(STREAM, params={"prompt": "a cat", "use_ai_classification": "0"})
    assert parse_events(await off.read())[-1].data["metadata"]["arm"] == "existing"


@pytest.mark.parametrize(("sent", "arm"), [("on", "ai"), ("Yes", "ai"), ("off", "existing"), ("no", "existing")])
async def test_get_stream_takes_the_flag_as_a_form_sends_it(client: Any, sent: str, arm: str) -> None:
    """A checked checkbox sends "on"; a yes/no select its option's value."""
    resp = await client.get(STREAM, params={"prompt": "a cat", "use_ai_classification": sent})
    assert parse_events(await resp.read())[-1].data["metadata"]["arm"] == arm


async def test_get_stream_takes_empty_options_as_absent_and_the_first_of_a_repeated_name(client: Any) -> None:
    """An HTML form sends a select left alone as `quality=`: the default, not a 422."""
    resp = await client.get(f"{STREAM}?prompt=caf%C3%A9+latte+art&prompt=ignored&quality=&style=&format=")
    assert resp.status == 200, await resp.text()
    events = parse_events(await resp.read())
    assert events[0].data["preferences"] == {"quality": "balanced", "style": None, "format": None}
    assert events[-1].data["final_prompt"].startswith("caf\u00e9 latte art")


async def test_failing_stage_yields_error_event_and_falls_back(make_client: MakeClient) -> None:
    """A classifier bug becomes an `error` event; the rules answer and done says fallback_used."""
    client = await make_client(classifier=FailingClassifier())
    resp = await client.post(STREAM, json={"prompt": "upscale this photo"})
    assert resp.status == 200
    events = parse_events(await resp.read())
    assert [e.event for e in events] == ["context", "error", "intent", "model", "prompt", "done"]
    assert events[1].data["code"] == "stage_failed" and events[1].data["stage"] == "intent"
    assert events[2].data["source"] == "rules"
    assert events[-1].data["fallback_used"] is True
    assert events[-1].data["metadata"]["fallback_reason"] == "the intent stage failed; a safe default answered"
    assert client.app[SLOTS].in_use == 0


async def test_heartbeat_comments_keep_a_slow_stream_alive(make_client: MakeClient) -> None:
    """While a stage is slow, comment lines go out at the heartbeat interval."""
    gated = GatedClassifier(RulesClassifier())
    client = await make_client(classifier=gated, sse_heartbeat_seconds=0.05)
    resp = await client.post(STREAM, json={"prompt": "a boat"})
    await asyncio.wait_for(gated.entered.wait(), 2)
    await asyncio.sleep(0.2)
    gated.gate.set()
    body = await resp.read()
    assert b": keep-alive\n\n" in body
    assert [e.event for e in parse_events(body)] == STAGES


async def test_client_disconnect_cancels_pipeline_and_frees_the_slot(make_client: MakeClient) -> None:
    """Closing the connection mid-classification releases the classification slot."""
    gated = GatedClassifier(RulesClassifier())
    client = await make_client(classifier=gated)
    slots = client.app[SLOTS]
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(STREAM), json={"prompt": "a long wait"})
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"id: 1\nevent: context")
        await asyncio.wait_for(gated.entered.wait(), 2)
        assert slots.in_use == 1
        resp.close()  # drop the connection without reading on
    await wait_until(lambda: slots.in_use == 0)
    assert slots.waiting == 0
    await wait_until(lambda: "499" in client.app[STATS].snapshot()["responses_by_status"])
    assert client.app[STATS].snapshot()["responses_by_status"] == {"499": 1}  # not a server error


async def test_overload_gives_503_with_retry_after(make_client: MakeClient) -> None:
    """With every slot busy past the queue timeout, /process answers 503 and Retry-After."""
    gated = GatedClassifier(RulesClassifier())
    client = await make_client(
        classifier=gated, max_concurrent_classifications=1, classification_queue_timeout=0.1
    )
    first = asyncio.create_task(client.post("/api/v1/enhanced/process", json={"prompt": "one"}))
    await asyncio.wait_for(gated.entered.wait(), 2)
    second = await client.post("/api/v1/enhanced/process", json={"prompt": "two"})
    assert second.status == 503
    assert int(second.headers["Retry-After"]) >= 1
    assert (await second.json())["error"] == "overloaded"
    gated.gate.set()
    assert (await first).status == 200
    await wait_until(lambda: client.app[SLOTS].in_use == 0 and client.app[SLOTS].waiting == 0)
    # Counted as the stream's overload event is: dashboards see both routes' refusals.
    assert client.app[STATS].errors == {"overloaded": 1}
    assert 'gateway_errors_total{code="overloaded"} 1' in await (await client.get("/metrics")).text()


async def test_overload_on_a_stream_is_an_error_event(make_client: MakeClient) -> None:
    """Once the stream has started, overload arrives as an `error` event with code overloaded."""
    gated = GatedClassifier(RulesClassifier())
    client = await make_client(
        classifier=gated, max_concurrent_classifications=1, classification_queue_timeout=0.1
    )
    first = asyncio.create_task(client.post(STREAM, json={"prompt": "one"}))
    await asyncio.wait_for(gated.entered.wait(), 2)
    resp = await client.post(STREAM, json={"prompt": "two"})
    body = await resp.read()
    events = parse_events(body)
    assert [e.event for e in events] == ["context", "error"]
    assert events[1].data["code"] == "overloaded"
    assert b"retry: 1000\nid: 2\nevent: error\n" in body  # an EventSource retries after Retry-After
    assert events[1].data["elapsed_ms"] >= 100  # stamped when sent, after the 0.1 s queue wait
    assert events[1].data["trace_id"] == events[0].data["trace_id"]
    gated.gate.set()
    assert [e.event for e in parse_events(await (await first).read())] == STAGES
    assert client.app[SLOTS].in_use == 0
    # Its status line said 200; its trace says it failed (an SLO on spans sees the overload).
    await wait_until(lambda: client.app[TRACING].buffer.get(events[0].data["trace_id"]) is not None)
    trace = client.app[TRACING].buffer.get(events[0].data["trace_id"])
    assert trace is not None and trace.spans is not None
    (server,) = [span for span in trace.spans if span.kind == "SERVER"]
    assert server.status == "ERROR" and server.attributes["error.type"] == "overloaded"
    assert server.attributes["http.response.status_code"] == 200


async def test_a_heartbeat_that_finds_the_client_gone_makes_the_next_send_fail() -> None:
    """The stage after a failed heartbeat learns the client is gone, instead of queueing frames."""
    stream = EventStream(heartbeat_seconds=0.05)

    async def gone(data: bytes) -> None:
        raise ConnectionResetError("peer closed")

    stream.write = gone  # type: ignore[method-assign]  # the transport, as a closed one answers
    await stream._send_heartbeat()
    with pytest.raises(ConnectionResetError, match="client went away"):
        await stream.send("intent", b"{}")


async def test_a_flush_not_yet_begun_leaves_with_the_end_of_the_stream_in_one_write(
    aiohttp_client: Any,
) -> None:
    """A handler woken before its first flush ran (as cache misses are, by the fast tier's batch)
    ends the stream in one write: headers, every event and the terminating chunk."""
    writes: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        write = transport.write
        transport.write = lambda data: (writes.append(bytes(data)), write(data))[1]  # type: ignore[method-assign]
        woken = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(woken.set_result, None)  # due before the flush
        stream = EventStream(heartbeat_seconds=30)
        await stream.prepare(request)
        await stream.send("context", b"{}")
        await woken
        await stream.send("done", b"{}")
        await stream.write_eof()
        return stream

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    response = await client.get("/")
    assert [e.event for e in parse_events(await response.read())] == ["context", "done"]
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"0\r\n\r\n")


async def test_on_shutdown_a_stream_past_its_grace_ends_with_an_error_event_it_can_retry_on(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM (the server stopping): a stream still waiting on its classifier after
    SHUTDOWN_GRACE_SECONDS hears `shutting_down` and a proper end of stream, not a cut
    connection (its log line: 200, the error in-band as for an overload once a stream began, not
    the client's 499); the server stops soon after."""
    gated = GatedClassifier(RulesClassifier())
    client = await make_client(classifier=gated, shutdown_grace_seconds=0.3)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(STREAM), json={"prompt": "a long wait"})
        await asyncio.wait_for(gated.entered.wait(), 5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with caplog.at_level("INFO", logger="gateway.request"):
            closing = asyncio.create_task(client.server.close())
            body = await asyncio.wait_for(resp.read(), 5)  # ends: no ClientPayloadError
            await closing
        took = loop.time() - started
    events = parse_events(body)
    assert [e.event for e in events] == ["context", "error"]
    assert events[1].data["code"] == "shutting_down" and events[1].data["trace_id"] == events[0].data["trace_id"]
    assert 0.3 <= took < 2.0
    (line,) = [r for r in caplog.records if r.name == "gateway.request"]
    assert line.status == 200  # type: ignore[attr-defined]  # the stream had begun: the error is in-band
    assert line.ended_with == "shutting_down"  # type: ignore[attr-defined]  # ... and the line says it


async def test_on_shutdown_a_stream_that_finishes_within_its_grace_is_untouched(make_client: MakeClient) -> None:
    gated = GatedClassifier(RulesClassifier())
    client = await make_client(classifier=gated, shutdown_grace_seconds=5)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(STREAM), json={"prompt": "change my hair to blonde"})
        await asyncio.wait_for(gated.entered.wait(), 5)
        closing = asyncio.create_task(client.server.close())
        await asyncio.sleep(0.1)
        gated.gate.set()  # the classifier answers during the grace
        events = parse_events(await asyncio.wait_for(resp.read(), 5))
        await closing
    assert [e.event for e in events] == STAGES
