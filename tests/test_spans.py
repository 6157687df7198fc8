"""Light spans: stage spans take the request's current-span slot in turn, and only where that is safe."""

from __future__ import annotations

import asyncio
import contextlib

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import get_current_span

from observability.spans import LightSpan
from observability.tracing import StageInstruments, Tracing, make_sampler
from pipeline.cache import IntentCache
from pipeline.types import ClassifierInput, IntentClassification, IntentSource, WorkflowType


class Named:
    """A tracer whose spans are told apart by name in assertions."""

    def __init__(self) -> None:
        self.tracing = Tracing(resource=Resource.create({}), sampler=make_sampler("always_on"))
        self.stages = StageInstruments(self.tracing)
        self.names: dict[int, str] = {}

    def name(self, span: LightSpan, name: str) -> LightSpan:
        self.names[span.context.span_id] = name
        return span

    def current(self) -> str:
        return self.names.get(get_current_span().get_span_context().span_id, "?")

    def parent_of(self, span: LightSpan) -> str:
        assert span.parent is not None
        return self.names.get(span.parent.span_id, "?")


async def test_a_stage_is_current_while_open_and_the_request_again_after() -> None:
    t = Named()
    with t.name(t.tracing.server_span("POST /stream", {}, {}), "request"):
        stage_span = t.stages.spans()
        for stage in ("context", "intent"):
            with t.name(stage_span(f"stage.{stage}"), stage) as span:
                assert t.current() == stage and t.parent_of(span) == "request"
            assert t.current() == "request"


async def test_stage_spans_are_filed_with_their_request_in_one_trace() -> None:
    t = Named()
    request = t.tracing.server_span("POST /stream", {}, {})
    with request:
        stage_span = t.stages.spans()
        for stage in ("context", "intent"):
            with stage_span(f"stage.{stage}"):
                pass
        assert t.tracing.buffer.get(request.trace_id) is None  # filed when the request ends
    trace = t.tracing.buffer.get(request.trace_id)
    assert trace is not None and trace.spans is not None
    assert [(s.name, s.parent_span_id) for s in trace.spans] == [
        ("POST /stream", None), ("stage.context", request.span_id), ("stage.intent", request.span_id)]


async def test_a_client_call_in_the_requests_task_is_current_and_filed_with_the_request() -> None:
    """The limiter's Redis calls: made in the request's task, they take its slot like stages."""
    t = Named()
    request = t.tracing.server_span("POST /stream", {}, {})
    with t.name(request, "request"):
        call = t.tracing.client_span("rate_limit.admit", {"db.system": "redis"})
        assert isinstance(call, LightSpan)
        with t.name(call, "admit"):
            assert t.current() == "admit"
        assert t.current() == "request"
        assert t.tracing.buffer.get(request.trace_id) is None  # filed when the request ends
    trace = t.tracing.buffer.get(request.trace_id)
    assert trace is not None and trace.spans is not None
    assert [(s.name, s.parent_span_id) for s in trace.spans] == [
        ("POST /stream", None), ("rate_limit.admit", request.span_id)]


async def test_pipelines_side_by_side_nest_under_the_request_and_leave_it_current() -> None:
    """Two pipelines under gather in one request: their stages overlap without nesting, so
    they must not take turns in the request's slot."""
    t = Named()
    parents: dict[str, str] = {}

    async def pipeline(tag: str, seconds: float) -> None:
        with t.name(t.stages.spans()(f"stage.{tag}"), tag) as span:
            await asyncio.sleep(seconds)
            assert t.current() == tag
            parents[tag] = t.parent_of(span)

    with t.name(t.tracing.server_span("POST /compare", {}, {}), "request"):
        await asyncio.gather(pipeline("a", 0.01), pipeline("b", 0.02))
        assert t.current() == "request"
        with t.name(t.stages.spans()("stage.next"), "next") as after:
            assert t.parent_of(after) == "request"
    assert parents == {"a": "request", "b": "request"}


async def test_a_pipeline_run_in_another_task_is_not_the_handlers_current_span() -> None:
    """run_pipeline takes its stage spans in the task that runs it (here a child task)."""
    t = Named()
    with t.name(t.tracing.server_span("POST /stream", {}, {}), "request"):
        opened = asyncio.Event()

        async def slow_stage() -> None:
            with t.name(t.stages.spans()("stage.slow"), "slow"):
                opened.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(slow_stage())
        await opened.wait()
        assert t.current() == "request"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert t.current() == "request"


class _Classifier:
    name, version = "demo", "1"

    async def quick_answer(self, query: ClassifierInput) -> None:
        return None  # the test's classify() answers, by awaiting


async def test_a_shared_classification_stays_a_child_of_the_stage_that_started_it() -> None:
    """Request A starts a classification, B joins it, A's client goes away: the classifier's
    outside call is still A's intent stage's child, not whatever A's request does next."""
    t = Named()
    cache = IntentCache(ttl=60, redis=None, timeout=1)
    release = asyncio.Event()
    parents: list[str] = []
    answer = IntentClassification(workflow_type=WorkflowType.IMAGE_GENERATION, confidence=0.9, reasoning="r",
                                  source=IntentSource.RULES)

    async def classify() -> IntentClassification:
        await release.wait()
        call = t.tracing.client_span("chat", {})
        assert isinstance(call, LightSpan)
        with call:
            parents.append(t.parent_of(call))
        return answer

    async def request(tag: str) -> None:
        with t.name(t.tracing.server_span("POST /stream", {}, {}), f"{tag}.request"):
            with t.name(t.stages.spans()("stage.intent"), f"{tag}.intent"):
                await cache.get_or_classify(_Classifier(), ClassifierInput(prompt="a cat"), classify)

    a = asyncio.create_task(request("A"))
    await asyncio.sleep(0.01)
    b = asyncio.create_task(request("B"))
    await asyncio.sleep(0.01)
    a.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await a
    release.set()
    await b
    assert parents == ["A.intent"]
