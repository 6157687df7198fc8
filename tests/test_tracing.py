"""Traces: a server span per request, a span per stage under it, W3C trace context, OTLP export."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.appkeys import TRACING
from gateway.middleware import _clip
from observability.logging import JsonFormatter
from observability.tracing import SAMPLERS, RequestRootSampler, Tracing, make_sampler
from pipeline.classifiers.rules import RulesClassifier
from tests.conftest import FailingClassifier, GatedClassifier, MakeClient, wait_until
from tests.sse import parse_events

PROCESS = "/api/v1/enhanced/process"
STREAM = "/api/v1/enhanced/stream"
STAGES = ("context", "intent", "model", "prompt")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def traced(make_client: MakeClient, **overrides: Any) -> tuple[Any, InMemorySpanExporter]:
    client = await make_client(**overrides)
    exporter = InMemorySpanExporter()
    client.server.app[TRACING].add_span_processor(SimpleSpanProcessor(exporter))
    return client, exporter


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


async def test_one_trace_per_request_with_a_span_per_stage(make_client: MakeClient) -> None:
    """/process makes one trace: the server span, and the four stage spans as its children."""
    client, exporter = await traced(make_client)
    response = await client.post(PROCESS, json={"prompt": "change my hair to blonde with bangs"})
    body = await response.json()
    spans = exporter.get_finished_spans()
    assert {hex_trace(s) for s in spans} == {body["trace_id"]} == {response.headers["X-Trace-Id"]}
    named = by_name(spans)
    server = named[f"POST {PROCESS}"]
    assert server.kind is SpanKind.SERVER and server.parent is None
    assert server.attributes is not None and server.context is not None
    assert server.attributes["http.route"] == PROCESS
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["server.address"] == "127.0.0.1"
    assert server.attributes["server.port"] == client.port
    for stage in STAGES:
        span = named[f"stage.{stage}"]
        assert span.parent is not None and span.parent.span_id == server.context.span_id
        assert span.attributes is not None and span.attributes["fallback_used"] is False
    intent = named["stage.intent"].attributes
    model = named["stage.model"].attributes
    assert intent is not None and model is not None
    assert intent["workflow_type"] == body["workflow_type"]
    assert intent["confidence"] == body["intent_confidence"]
    assert intent["intent_source"] == body["intent_source"] == "rules"
    assert intent["cache_hit"] is False
    assert model["model_id"] == body["model_selection"]["model_id"]
    assert model["estimated_cost"] == body["estimated_cost"]
    assert len(spans) == 1 + len(STAGES)


async def test_a_client_that_leaves_mid_stage_is_no_error_in_the_trace_or_the_stage_metric(
    make_client: MakeClient,
) -> None:
    """499 is the client's doing: the server span and the stage it cut short keep an unset status
    (marked cancelled), and the stage's duration is counted as cancelled, not as an error."""
    gated = GatedClassifier(RulesClassifier())
    client, exporter = await traced(make_client, classifier=gated)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(STREAM), json={"prompt": "walk away from me"})
        await resp.content.readuntil(b"\n\n")  # the context event
        await asyncio.wait_for(gated.entered.wait(), 5)
        resp.close()
    await wait_until(lambda: f"POST {STREAM}" in by_name(exporter.get_finished_spans()), timeout=5)
    named = by_name(exporter.get_finished_spans())
    server, intent = named[f"POST {STREAM}"], named["stage.intent"]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 499
    for span in (server, intent):
        assert span.status.status_code is StatusCode.UNSET and not span.events, span.name
        assert span.attributes is not None and span.attributes["cancelled"] is True
    # The stage cut short still says which stage and how it ended (it used to carry only "cancelled").
    assert {k: intent.attributes[k] for k in ("stage", "outcome", "fallback_used")} == {
        "stage": "intent", "outcome": "cancelled", "fallback_used": False}
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_stage_duration_seconds_count{stage="intent",outcome="cancelled"} 1' in metrics
    assert 'stage="intent",outcome="error"' not in metrics


@pytest.mark.parametrize("port", ["9" * 4301, "123456", "²"])
async def test_a_host_header_whose_port_is_no_port_is_traced_without_one(make_client: MakeClient, port: str) -> None:
    """The Host header is the client's: a port int() refuses (over 4,300 digits) or no port could be
    (six digits) leaves server.port out rather than failing the request."""
    client, exporter = await traced(make_client)
    response = await client.post(PROCESS, json={"prompt": "animate this sunset"}, headers={"Host": f"127.0.0.1:{port}"})
    assert response.status == 200
    server = by_name(exporter.get_finished_spans())[f"POST {PROCESS}"]
    assert server.attributes is not None
    assert "server.port" not in server.attributes
    assert server.attributes["server.address"] == _clip(f"127.0.0.1:{port}")  # long values are clipped


async def test_the_intent_span_says_which_tier_of_the_embedded_classifier_answered(
    make_client: MakeClient,
) -> None:
    """An SRE reading a slow stage.intent sees that MiniLM ran (and a fast one that it did not)."""
    client, exporter = await traced(make_client, intent_classifier="local")
    for prompt in ("something with the sky", "change my hair to blonde with bangs"):
        response = await client.post(PROCESS, json={"prompt": prompt})
        assert response.status == 200
    tiers = [s.attributes["classifier_tier"] for s in exporter.get_finished_spans()
             if s.name == "stage.intent" and s.attributes is not None]
    assert tiers == ["minilm", "static"]


async def test_incoming_traceparent_is_continued(make_client: MakeClient) -> None:
    """A posted traceparent's trace id comes back in the header, the JSON and every span."""
    client, exporter = await traced(make_client)
    response = await client.post(
        PROCESS,
        json={"prompt": "animate this sunset"},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    assert response.headers["X-Trace-Id"] == TRACE_ID
    assert (await response.json())["trace_id"] == TRACE_ID
    spans = exporter.get_finished_spans()
    assert {hex_trace(s) for s in spans} == {TRACE_ID}
    server = by_name(spans)[f"POST {PROCESS}"]
    assert server.parent is not None and server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == PARENT_ID


async def test_every_sse_event_carries_the_continued_trace_id(make_client: MakeClient) -> None:
    """On the stream, each event's data has the incoming trace id, and the stages are spans of it."""
    client, exporter = await traced(make_client)
    response = await client.post(
        "/api/v1/enhanced/stream",
        json={"prompt": "a cat playing in the garden"},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    events = parse_events(await response.read())
    assert [e.event for e in events] == [*STAGES, "done"]
    assert {e.data["trace_id"] for e in events} == {TRACE_ID}
    named = by_name(exporter.get_finished_spans())
    assert {f"stage.{s}" for s in STAGES} <= set(named)
    assert {hex_trace(s) for s in named.values()} == {TRACE_ID}


async def test_failed_stage_span_is_an_error_and_says_fallback(make_client: MakeClient) -> None:
    """A classifier that raises marks the intent span ERROR with the exception; the answer falls back."""
    client, exporter = await traced(make_client, classifier=FailingClassifier())
    response = await client.post(PROCESS, json={"prompt": "make it blue"})
    assert response.status == 200 and (await response.json())["fallback_used"] is True
    intent = by_name(exporter.get_finished_spans())["stage.intent"]
    assert intent.status.status_code is StatusCode.ERROR
    assert intent.attributes is not None and intent.attributes["fallback_used"] is True
    assert [event.name for event in intent.events] == ["exception"]
    model = by_name(exporter.get_finished_spans())["stage.model"]  # after it, no stage fell back
    assert model.attributes is not None and model.attributes["fallback_used"] is False


async def test_sampler_always_off_records_nothing_but_keeps_a_trace_id(make_client: MakeClient) -> None:
    """With OTEL_TRACES_SAMPLER=always_off no span is kept, yet the answer still has a trace id."""
    client, exporter = await traced(make_client, otel_traces_sampler="always_off")
    response = await client.post(PROCESS, json={"prompt": "a red bicycle"})
    trace_id = (await response.json())["trace_id"]
    assert len(trace_id) == 32 and trace_id == response.headers["X-Trace-Id"]
    assert exporter.get_finished_spans() == ()
    assert await (await client.get("/debug/traces")).json() == []


async def test_sdk_disabled_still_continues_traceparent(make_client: MakeClient) -> None:
    """OTEL_SDK_DISABLED=true: no spans, and the caller's trace id is still answered."""
    client, exporter = await traced(make_client, otel_sdk_disabled=True)
    response = await client.post(
        PROCESS, json={"prompt": "a red bicycle"}, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    )
    assert (await response.json())["trace_id"] == TRACE_ID
    assert exporter.get_finished_spans() == ()


@pytest.fixture
def otlp_requests() -> list[ExportTraceServiceRequest]:
    return []


async def test_spans_arrive_at_an_otlp_http_receiver(
    make_client: MakeClient, aiohttp_server: Any, otlp_requests: list[ExportTraceServiceRequest]
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the spans are posted as protobuf to /v1/traces."""

    async def receive(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        otlp_requests.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    receiver = web.Application()
    receiver.router.add_post("/v1/traces", receive)
    collector = await aiohttp_server(receiver)
    client = await make_client(
        otel_exporter_otlp_endpoint=str(collector.make_url("/")), otel_service_name="gateway-under-test"
    )
    response = await client.post(PROCESS, json={"prompt": "cinematic video of waves"})
    trace_id = (await response.json())["trace_id"]
    await client.server.app[TRACING].flush()

    spans = [
        (resource_spans.resource, span)
        for export in otlp_requests
        for resource_spans in export.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert {span.name for _, span in spans} >= {f"POST {PROCESS}", *(f"stage.{s}" for s in STAGES)}
    assert {span.trace_id.hex() for _, span in spans} == {trace_id}
    services = {
        attribute.value.string_value
        for resource, _ in spans
        for attribute in resource.attributes
        if attribute.key == "service.name"
    }
    assert services == {"gateway-under-test"}
    exported = await (await client.get("/metrics")).text()
    assert f'gateway_trace_export_spans_total{{outcome="exported"}} {len(spans)}' in exported


async def test_spans_a_collector_refuses_are_counted_on_metrics(
    make_client: MakeClient, aiohttp_server: Any
) -> None:
    """The SDK only logged a failed export: an SRE watching /metrics saw nothing."""

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=400, text="bad batch")

    receiver = web.Application()
    receiver.router.add_post("/v1/traces", refuse)
    collector = await aiohttp_server(receiver)
    client = await make_client(otel_exporter_otlp_endpoint=str(collector.make_url("/")))
    await client.post(PROCESS, json={"prompt": "a cat"})
    await client.server.app[TRACING].flush()
    metrics = await (await client.get("/metrics")).text()
    assert f'gateway_trace_export_spans_total{{outcome="failed"}} {1 + len(STAGES)}' in metrics
    assert f'gateway_trace_export_spans_total{{outcome="queued"}} {1 + len(STAGES)}' in metrics
    assert 'gateway_trace_export_spans_total{outcome="exported"} 0' in metrics


async def test_debug_traces_lists_and_shows_recent_traces(make_client: MakeClient) -> None:
    """/debug/traces lists the request's trace; /debug/traces/{id} gives its spans as JSON or HTML."""
    client = await make_client()
    trace_id = (await (await client.post(PROCESS, json={"prompt": "put @sarah in a red dress"})).json())[
        "trace_id"
    ]
    listed = await (await client.get("/debug/traces")).json()
    assert listed[0]["trace_id"] == trace_id and listed[0]["root"] == f"POST {PROCESS}"
    assert listed[0]["span_count"] == 5

    detail = await (await client.get(f"/debug/traces/{trace_id}")).json()
    names = [span["name"] for span in detail["spans"]]
    assert names[0] == f"POST {PROCESS}" and {f"stage.{s}" for s in STAGES} <= set(names)
    root_id = detail["spans"][0]["span_id"]
    assert all(s["parent_span_id"] == root_id for s in detail["spans"][1:])

    page = await client.get(f"/debug/traces/{trace_id}", headers={"Accept": "text/html"})
    assert page.content_type == "text/html"
    text = await page.text()
    assert trace_id in text and "stage.intent" in text and "model_id=" in text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")  # no script, ever
    same = await client.get(f"/debug/traces/{trace_id}?format=html")
    assert await same.text() == text
    upper = await client.get(f"/debug/traces/{trace_id.upper()}")
    assert (await upper.json())["trace_id"] == trace_id
    missing = await client.get(f"/debug/traces/{'0' * 31}1")
    assert missing.status == 404


async def test_debug_requests_make_no_trace_even_when_they_match_no_route(make_client: MakeClient) -> None:
    """/debug/traces/<not an id> is a 404 of no route; it still must not push traces out."""
    client = await make_client()
    trace_id = (await (await client.post(PROCESS, json={"prompt": "a cat"})).json())["trace_id"]
    for path in ("/debug/traces/deadbeef", "/debug/nothing", "/debug/traces"):
        await client.get(path)
    listed = await (await client.get("/debug/traces")).json()
    assert [t["trace_id"] for t in listed] == [trace_id]


async def test_the_waterfall_says_what_failed_not_only_that_it_did(make_client: MakeClient) -> None:
    """A failed stage was a red bar with its attributes: an SRE had to open the JSON to read why."""
    client = await make_client(classifier=FailingClassifier())
    trace_id = (await (await client.post(PROCESS, json={"prompt": "a cat"})).json())["trace_id"]
    page = await (await client.get(f"/debug/traces/{trace_id}?format=html")).text()
    assert "ERROR; RuntimeError: classifier exploded; stage=intent" in page


async def test_buffer_keeps_only_the_most_recent_traces(make_client: MakeClient) -> None:
    """DEBUG_TRACES_LIMIT bounds the ring buffer; the oldest trace is evicted first."""
    client = await make_client(debug_traces_limit=2)
    ids = []
    for prompt in ("one cat", "two cats", "three cats"):
        ids.append((await (await client.post(PROCESS, json={"prompt": prompt})).json())["trace_id"])
    listed = await (await client.get("/debug/traces")).json()
    assert [t["trace_id"] for t in listed] == [ids[2], ids[1]]
    assert ids[0] not in {t["trace_id"] for t in listed}
    evicted = await client.get(f"/debug/traces/{ids[0]}")
    assert evicted.status == 404
    assert (await evicted.json())["detail"] == "no such trace in the buffer (evicted, unsampled or unknown)"


async def test_what_a_caller_chooses_cannot_fill_the_trace_buffer(make_client: MakeClient) -> None:
    """Unauthenticated requests naming one trace (traceparent) with 8 KB paths and User-Agents:
    each span keeps at most 256 characters of them, and all traces together at most max_spans
    spans (requests naming one trace filled it to 500, in every one of 200 traces)."""
    client = await make_client(gateway_api_keys="alice:alice-key-0123456789abcdef")
    buffer = client.app[TRACING].buffer
    buffer.max_spans = 40
    for trace in range(3):
        parent = {"traceparent": f"00-{trace + 1:032x}-{1:016x}-01", "User-Agent": "u" * 8000}
        for _ in range(30):
            assert (await client.get("/api/v1/enhanced/usage/" + "x" * 8000, headers=parent)).status in (401, 404)
    assert buffer.spans <= 40 and buffer.spans == sum(view.span_count for view in buffer.recent())
    kept = buffer.get(f"{3:032x}")
    assert kept is not None and kept.spans
    attributes = kept.spans[0].attributes
    assert len(attributes["url.path"]) <= 257 and len(attributes["user_agent.original"]) <= 257


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Capture the root logger's records as the JSON lines production writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_request_log_line_and_stage_warning_carry_trace_and_span(
    make_client: MakeClient, json_log: io.StringIO
) -> None:
    """One JSON line per request with trace_id and span_id; a stage's warning names its own span."""
    client, exporter = await traced(make_client, classifier=FailingClassifier())
    trace_id = (await (await client.post(PROCESS, json={"prompt": "make it blue"})).json())["trace_id"]
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    named = by_name(exporter.get_finished_spans())
    requests = [line for line in lines if line["logger"] == "gateway.request"]
    assert len(requests) == 1
    server = named[f"POST {PROCESS}"].context
    assert server is not None
    assert requests[0]["trace_id"] == trace_id and requests[0]["span_id"] == f"{server.span_id:016x}"
    assert requests[0]["status"] == 200 and requests[0]["route"] == PROCESS
    assert {line["pid"] for line in lines} == {os.getpid()}  # which worker, with serve --workers N
    (warning,) = [
        line for line in lines if line["level"] == "warning" and line["logger"] == "pipeline.runner"
    ]
    intent = named["stage.intent"].context
    assert intent is not None
    assert warning["trace_id"] == trace_id and warning["span_id"] == f"{intent.span_id:016x}"


async def test_stage_spans_nest_under_the_request_for_concurrent_requests(make_client: MakeClient) -> None:
    """Concurrent requests do not mix: each trace has its own server span and four stage spans."""
    client, exporter = await traced(make_client, classifier=RulesClassifier())
    answers = await asyncio.gather(
        *(client.post(PROCESS, json={"prompt": f"a cat number {i}"}) for i in range(5))
    )
    trace_ids = {(await answer.json())["trace_id"] for answer in answers}
    assert len(trace_ids) == 5
    spans = exporter.get_finished_spans()
    for trace_id in trace_ids:
        mine = [s for s in spans if hex_trace(s) == trace_id]
        assert len(mine) == 5
        (server,) = [s for s in mine if s.kind is SpanKind.SERVER]
        assert server.context is not None
        assert all(s.parent and s.parent.span_id == server.context.span_id for s in mine if s is not server)


async def test_scrapes_and_probes_are_not_traced(make_client: MakeClient) -> None:
    """/metrics, /health and /debug/* make no traces, so scrapes do not flush the buffer."""
    client, exporter = await traced(make_client)
    for path in ("/metrics", "/health", "/debug/traces"):
        response = await client.get(path)
        assert response.status == 200 and len(response.headers["X-Trace-Id"]) == 32
    assert exporter.get_finished_spans() == ()


async def test_parent_based_sampler_follows_the_callers_decision(make_client: MakeClient) -> None:
    """parentbased_traceidratio at 0: only requests whose traceparent says sampled are recorded."""
    client, exporter = await traced(
        make_client, otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0.0
    )
    await client.post(PROCESS, json={"prompt": "a red bicycle"})
    unsampled = f"00-{'1' * 32}-{PARENT_ID}-00"
    await client.post(PROCESS, json={"prompt": "a red bicycle"}, headers={"traceparent": unsampled})
    assert exporter.get_finished_spans() == ()
    sampled = f"00-{TRACE_ID}-{PARENT_ID}-01"
    await client.post(PROCESS, json={"prompt": "a red bicycle"}, headers={"traceparent": sampled})
    spans = exporter.get_finished_spans()
    assert len(spans) == 5 and {hex_trace(s) for s in spans} == {TRACE_ID}


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_new_traces_fixed_decision_is_the_one_its_sampler_makes(name: str) -> None:
    """Tracing skips the sampler for new traces when its answer is fixed: it must be the same."""
    sampler = make_sampler(name, 0.5)
    assert isinstance(sampler, RequestRootSampler)
    assert (sampler.root_decision is None) == name.endswith("traceidratio")  # those depend on the id
    tracing = Tracing(resource=Resource.create({}), sampler=sampler)
    for _ in range(20):
        span = tracing.server_span("POST /x", {}, {})
        asked = sampler.should_sample(Context(), span.trace_number, "POST /x", SpanKind.SERVER).decision
        assert sampler.root_decision in (None, asked)
        assert span.recording is asked.is_recording()  # type: ignore[no-untyped-call]
        assert span.context.trace_flags.sampled is asked.is_sampled()  # type: ignore[no-untyped-call]


def test_otel_variables_are_read_and_checked() -> None:
    """The standard OTEL_* variables land in Settings; an unknown sampler is refused at start-up."""
    from gateway.config import ConfigError, Settings

    settings = Settings.from_env(
        {
            "OTEL_SERVICE_NAME": "gw",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        }
    )
    assert settings.otel_service_name == "gw" and settings.otel_traces_sampler_arg == 0.25
    assert settings.otel_exporter_otlp_endpoint == "http://collector:4318"
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        Settings.from_env({"OTEL_TRACES_SAMPLER": "sometimes"})


@pytest.mark.parametrize(("env", "expected"), [
    ({}, {"service.name": "intent-gateway"}),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,k8s.pod.name=a%20b,service.version=1.2"},
     {"service.name": "from-attrs", "k8s.pod.name": "a b", "service.version": "1.2"}),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "wins"}, {"service.name": "wins"}),
])  # fmt: skip
def test_resource_attributes_are_read_as_the_otel_spec_says(env: dict[str, str], expected: dict[str, str]) -> None:
    """service.name from OTEL_RESOURCE_ATTRIBUTES was overwritten by the default, and values
    were not percent-decoded; the SDK's own telemetry.sdk.* were missing."""
    from gateway.config import Settings
    from gateway.telemetry import resource_of

    attributes = dict(resource_of(Settings.from_env(env)).attributes)
    assert {key: attributes[key] for key in expected} == expected
    assert attributes["telemetry.sdk.language"] == "python" and attributes["telemetry.sdk.name"] == "opentelemetry"


async def test_a_collector_that_hangs_costs_its_spans_not_the_shutdown(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector that takes connections and never answers: each queued batch waited out the
    exporter's 10 s, and shutdown ran 15-30 s past the drain (an SRE's measurement)."""
    with socket.socket() as silent:  # listens; the kernel completes connections; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        client = await make_client(otel_exporter_otlp_endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}")
        for prompt in ("one cat", "two cats", "three cats"):
            assert (await client.post(PROCESS, json={"prompt": prompt})).status == 200
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="observability.tracing"):
            await client.server.app[TRACING].close(grace=0.5)
        assert time.monotonic() - started < 3
        assert "the spans still queued are dropped" in caplog.text
