"""HTTP handlers: validate, run the pipeline, answer in JSON or SSE."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time

import msgspec
from aiohttp import web

from gateway.analytics import handlers as analytics
from gateway.appkeys import (
    ARM,
    ARRIVED,
    HEALTH_PROBES,
    IMAGE_URL_POLICY,
    IN_FLIGHT,
    INTENT_CACHE,
    LIMITER,
    REDIS,
    REQUEST_LOG,
    SETTINGS,
    SLOTS,
    STAGE_INSTRUMENTS,
    STAGES,
    STATS,
    TIMELINE,
    TRACE_ID,
    USER_ID,
)
from gateway.bodies import read_json_body
from gateway.debug import add_debug_routes
from gateway.errors import ShuttingDown, as_gateway_error
from gateway.keyroutes import add_key_routes
from gateway.limits import charge_cost, record_unstarted, usage
from gateway.llm import llm_metrics
from gateway.responses import encode_json, json_response
from gateway.sse import EventStream
from gateway.telemetry import prometheus_metrics
from gateway.wire import (
    ProcessBody,
    decode_body,
    decode_query,
    to_pipeline_request,
)
from pipeline.errors import PipelineError
from pipeline.events import ErrorEvent, ProcessResult, PromptEvent
from pipeline.protocols import Stage
from pipeline.runner import run_pipeline
from pipeline.state import RequestState
from pipeline.types import PipelineRequest

log = logging.getLogger(__name__)

async def read_body(request: web.Request) -> ProcessBody:
    try:
        body = await read_json_body(request)
    except asyncio.CancelledError:  # the client left before it had sent its body
        record_unstarted(request, "client_disconnected")
        raise
    return decode_body(body)


def pipeline_request(request: web.Request, body: ProcessBody) -> PipelineRequest:
    return to_pipeline_request(
        body,
        user_id=request[USER_ID],
        trace_id=request[TRACE_ID],
        url_policy=request.app[IMAGE_URL_POLICY],
    )


class JsonRun:
    """A JSON pipeline request in IN_FLIGHT (a stream is there as its EventStream)."""

    __slots__ = ("shutting_down",)

    def __init__(self) -> None:
        self.shutting_down = False


async def run_to_result(
    request: web.Request, preq: PipelineRequest, *, started: float | None = None
) -> ProcessResult:
    """Run every stage and return the final answer (the `done` event); its times count from
    `started` (time.perf_counter), by default the request's arrival."""
    stages: tuple[Stage, ...] = request.app[STAGES]
    state = RequestState(request=preq, started=request[ARRIVED] if started is None else started)
    unfinished: str | None = "aborted"  # why no result was logged, until there is one
    in_flight = request.app[IN_FLIGHT]
    handler = asyncio.current_task()
    assert handler is not None
    in_flight[handler] = run = JsonRun()
    try:
        async for name, event in run_pipeline(stages, state, instruments=request.app[STAGE_INSTRUMENTS]):
            if isinstance(event, PromptEvent):
                await charge_cost(request, _chargeable(state))
            if name == "done":
                assert isinstance(event, ProcessResult)
                unfinished = None
                record_result(request, preq, event)
                return event
            if isinstance(event, ErrorEvent):
                request.app[STATS].record_error(event.code)
    except PipelineError as exc:  # overloaded: counted as the stream counts its error event
        unfinished = exc.code
        request.app[STATS].record_error(exc.code)
        raise
    except asyncio.CancelledError:  # the client went away (handler cancellation), or shutdown
        if not run.shutting_down:
            unfinished = "client_disconnected"
            raise
        # Our own cancellation (app.end_requests), past the shutdown grace: an answer the client
        # can retry on, not a connection cut (if it has gone too, the answer goes nowhere).
        handler.uncancel()
        unfinished = "shutting_down"
        request.app[STATS].record_error(unfinished)
        raise ShuttingDown() from None
    finally:
        in_flight.pop(handler, None)
        if unfinished is not None:
            record_unfinished(request, state, unfinished)
    raise AssertionError("pipeline ended without a done event")


def record_unfinished(request: web.Request, state: RequestState, reason: str) -> None:
    """Every request leaves a log row: one that ended without a result says why (and, once the
    intent stage began, which A/B arm it was on: an A/B analysis must count it too)."""
    if state.arm is not None:
        _note_arm(request, state.arm)
    if (request_log := request.app.get(REQUEST_LOG)) is not None:
        route = request.path.rsplit("/", 1)[-1]
        elapsed_ms = state.elapsed_ms()
        request_log.record_unfinished(state.request, reason=reason, route=route, elapsed_ms=elapsed_ms,
                                      arm=state.arm)


def _note_arm(request: web.Request, arm: str) -> None:
    """The arm for the request's log line: "both" once /compare has run the other too."""
    request[ARM] = arm if request.get(ARM, arm) == arm else "both"


def record_result(request: web.Request, preq: PipelineRequest, result: ProcessResult) -> None:
    _note_arm(request, result.metadata.arm)
    app = request.app
    # `_value_`, the members' own attribute: `.value` is a Python-level property (~0.3 us each).
    workflow = result.workflow_type._value_
    app[STATS].record_result(
        source=result.intent_source._value_,
        arm=result.metadata.arm,
        workflow=workflow,
        cache_hit=result.cache_hit,
        fallback_used=result.fallback_used,
        processing_seconds=result.processing_time,
    )
    app[TIMELINE].record(
        workflow=workflow,
        confidence=result.intent_confidence,
        estimated_cost=result.estimated_cost,
        fallback_used=result.fallback_used,
        cache_hit=result.cache_hit,
    )
    if (request_log := app.get(REQUEST_LOG)) is not None:
        request_log.record(preq, result, route=request.path.rsplit("/", 1)[-1])


async def process(request: web.Request) -> web.Response:
    """POST /api/v1/enhanced/process: the whole answer as one JSON object."""
    preq = pipeline_request(request, await read_body(request))
    return json_response(await run_to_result(request, preq))


async def stream_post(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/enhanced/stream: one SSE event per stage, then `done`."""
    return await _stream(request, pipeline_request(request, await read_body(request)))


async def stream_get(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/enhanced/stream?prompt=...: the same, for EventSource."""
    if request.headers.get("Last-Event-ID") == EventStream.LAST_EVENT_ID:
        # EventSource reconnecting after a finished stream, as browsers do every few seconds
        # until the page closes it: 204 No Content tells it to stop (the SSE spec), instead of
        # running the request (and charging the user's limits) again and again.
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    return await _stream(request, pipeline_request(request, decode_query(request.rel_url.raw_query_string)))


async def _stream(request: web.Request, preq: PipelineRequest) -> web.StreamResponse:
    # Everything that can be refused with a status code was refused before this point.
    app = request.app
    stream = EventStream(
        heartbeat_seconds=app[SETTINGS].sse_heartbeat_seconds,
        headers={"X-Trace-Id": preq.trace_id},
    )
    await stream.prepare(request)
    stages: tuple[Stage, ...] = app[STAGES]
    state = RequestState(request=preq, started=request[ARRIVED])
    events = run_pipeline(stages, state, instruments=app[STAGE_INSTRUMENTS])
    unfinished: str | None = "client_disconnected"  # why no result was logged, until there is one
    in_flight = app[IN_FLIGHT]
    handler = asyncio.current_task()
    assert handler is not None
    in_flight[handler] = stream
    try:
        async with contextlib.aclosing(events):
            try:
                async for name, event in events:
                    if name == "done":
                        assert isinstance(event, ProcessResult)
                        unfinished = None
                        record_result(request, preq, event)
                    elif isinstance(event, PromptEvent):  # the answer goes out: charged first
                        await charge_cost(request, _chargeable(state))
                    elif isinstance(event, ErrorEvent):
                        app[STATS].record_error(event.code)
                    await stream.send(name, encode_json(event), last=name == "done")
            except PipelineError as exc:
                # Overload after the stream started: say so in-band, then end the stream.
                unfinished = exc.code
                error = as_gateway_error(exc)
                app[STATS].record_error(error.code)
                stream.ended_with = error.code
                event = ErrorEvent(code=error.code, message=error.detail, trace_id=preq.trace_id,
                                   elapsed_ms=state.elapsed_ms())
                # An EventSource runs the request again by itself: after Retry-After, not its ~3 s.
                retry_after = error.headers().get("Retry-After")
                await stream.send("error", encode_json(event),
                                  retry_ms=int(retry_after) * 1000 if retry_after else None)
        await stream.write_eof()
    except ConnectionResetError:
        log.info("client went away mid-stream", extra={"trace_id": preq.trace_id})
    except asyncio.CancelledError:
        if not stream.shutting_down or unfinished is None:
            raise  # the client went away (handler cancellation), or the result went out already
        # Our own cancellation (app.end_requests), past the shutdown grace: the pipeline has
        # stopped; the client hears why, and the stream ends properly, so it retries elsewhere.
        handler.uncancel()
        unfinished = stream.ended_with = "shutting_down"
        app[STATS].record_error(unfinished)
        await _end_with_error(stream, ErrorEvent(
            code=ShuttingDown.code, message=ShuttingDown.DETAIL,
            trace_id=preq.trace_id, elapsed_ms=state.elapsed_ms(),
        ))  # fmt: skip
    finally:
        stream.stop()
        in_flight.pop(handler, None)
        if unfinished is not None:
            record_unfinished(request, state, unfinished)
    return stream


def _chargeable(state: RequestState) -> float:
    """The estimate charged to the user's cost limit as the final prompt goes out (after it the
    client has the answer: charged at `done`, a stream closed at the prompt event went free):
    nothing where the frontend asks the user instead of generating, for a prompt that asks for
    nothing ("hi") or a workflow missing its image ("animate this" with none: the same request,
    sent again with the image, was charged twice)."""
    intent, selection = state.intent, state.selection
    if intent is None or selection is None or intent.no_clear_intent or state.image_missing():
        return 0.0
    return selection.estimated_cost


async def _end_with_error(stream: EventStream, error: ErrorEvent) -> None:
    with contextlib.suppress(ConnectionResetError):  # it may have left meanwhile
        await stream.send("error", encode_json(error))
        await stream.write_eof()


class Differences(msgspec.Struct, kw_only=True):
    workflow_type: bool
    model_selection: bool
    prompt_changes: bool


class Comparison(msgspec.Struct, kw_only=True):
    ai_classification: ProcessResult
    existing_system: ProcessResult
    differences: Differences


async def compare(request: web.Request) -> web.Response:
    """POST /api/v1/enhanced/compare: the AI path and the existing rules, side by side."""
    preq = pipeline_request(request, await read_body(request))
    # The AI path whatever the rollout says for this user: comparing is the point (a user outside
    # it saw the rules twice). AI_CLASSIFICATION_ENABLED=false still turns it off.
    ai = await run_to_result(request, msgspec.structs.replace(preq, use_ai_classification=True,
                                                              ignore_rollout=True))
    # Timed from its own start: the rules' time is not the AI path's plus theirs.
    existing = await run_to_result(request, msgspec.structs.replace(preq, use_ai_classification=False),
                                   started=time.perf_counter())
    return json_response(
        Comparison(
            ai_classification=ai,
            existing_system=existing,
            differences=Differences(
                workflow_type=ai.workflow_type != existing.workflow_type,
                model_selection=ai.model_selection.model_id != existing.model_selection.model_id,
                # As the app defines it: whether the AI path rewrote the user's prompt.
                prompt_changes=ai.final_prompt != preq.prompt,
            ),
        )
    )


async def metrics_json(request: web.Request) -> web.Response:
    """GET /api/v1/enhanced/metrics: counters and rates of this instance."""
    slots = request.app[SLOTS]
    snapshot = request.app[STATS].snapshot()
    snapshot["llm"] = llm_metrics(request.app)
    snapshot["classification_slots"] = {
        "limit": slots.limit, "in_use": slots.in_use, "waiting": slots.waiting
    }
    snapshot["intent_cache"] = request.app[INTENT_CACHE].stats()
    snapshot["rate_limits"] = request.app[LIMITER].stats()
    redis = request.app[REDIS]
    snapshot["redis"] = redis.stats() if redis is not None else {"configured": False}
    snapshot["timeline"] = request.app[TIMELINE].snapshot()
    if (request_log := request.app.get(REQUEST_LOG)) is not None:
        snapshot["request_log"] = request_log.snapshot()
    return json_response(snapshot)


async def health(request: web.Request) -> web.Response:
    """GET /health: ok, or degraded naming the dependency that is not (200: requests are still
    served, from memory or a fallback); 503 unavailable while a dependency's state refuses them
    (keys unreadable, limits failing closed): a load balancer then sends the traffic elsewhere."""
    dependencies = await _dependencies(request.app)
    if any(dep.get("requests") == "refused" for dep in dependencies.values()):
        return json_response({"status": "unavailable", "dependencies": dependencies}, status=503)
    status = "degraded" if _degraded(dependencies) else "ok"
    return json_response({"status": status, "dependencies": dependencies})


async def system_health(request: web.Request) -> web.Response:
    """GET /api/v1/enhanced/health: the app plan's monitoring view (its get_system_health), for
    its dashboards. `model_availability` is the models the gateway itself runs (the classifiers):
    it never calls the hosted generation models, so it cannot say whether they answer."""
    dependencies = await _dependencies(request.app)
    classification = request.app[STATS].classification_health()
    models = {name: dependencies[name] for name in ("classifier", "llm") if name in dependencies}
    cache = {**request.app[INTENT_CACHE].stats(), "redis": dependencies["redis"]}
    healthy = classification["status"] == "healthy" and not _degraded(dependencies)
    return json_response({
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        "ai_classification": classification,
        "model_availability": models,
        "cache_status": cache,
        "dependencies": dependencies,
        "overall_status": "healthy" if healthy else "degraded",
    })  # fmt: skip


async def _dependencies(app: web.Application) -> dict[str, dict[str, object]]:
    """Each dependency's state, from its probe (those not configured say so)."""
    dependencies: dict[str, dict[str, object]] = {
        "classifier": {"state": "ok", "name": app[SETTINGS].intent_classifier},
        "redis": {"state": "not_configured"},
        "postgres": {"state": "not_configured"},
    }
    probes = app[HEALTH_PROBES]
    # Side by side: hung dependencies cost the slowest probe's timeout, not their sum (Redis
    # and Postgres one after the other took 1.5 s, past a load balancer's usual 1 s probe).
    states = await asyncio.gather(*(probe() for probe in probes.values()))
    dependencies.update(zip(probes, states, strict=True))
    return dependencies


def _degraded(dependencies: dict[str, dict[str, object]]) -> bool:
    return any(dep["state"] not in ("ok", "not_configured") for dep in dependencies.values())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/enhanced/process", process)
    app.router.add_post("/api/v1/enhanced/stream", stream_post)
    app.router.add_get("/api/v1/enhanced/stream", stream_get, allow_head=False)
    app.router.add_post("/api/v1/enhanced/compare", compare)
    app.router.add_get("/api/v1/enhanced/metrics", metrics_json)
    app.router.add_get("/api/v1/enhanced/usage", usage)
    app.router.add_get("/api/v1/enhanced/analytics/intents", analytics.intent_analytics)
    app.router.add_get("/api/v1/enhanced/analytics/costs", analytics.cost_analytics)
    app.router.add_post("/api/v1/references", analytics.save_reference)
    app.router.add_get("/api/v1/references", analytics.list_references)
    app.router.add_delete("/api/v1/references/{tag}", analytics.delete_reference)
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/enhanced/health", system_health)
    app.router.add_get("/metrics", prometheus_metrics)
    add_debug_routes(app)  # /debug/*: operator-only
    add_key_routes(app)

