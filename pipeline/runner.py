"""Runs an ordered list of stages over one request state, yielding each result as it completes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence

from observability.tracing import StageInstruments
from pipeline.cancellation import raise_if_cancelled
from pipeline.errors import PipelineError
from pipeline.events import ErrorEvent, ProcessResult, ResultMetadata, StageEvent
from pipeline.observe import stage_span_attributes
from pipeline.protocols import Stage
from pipeline.state import RequestState

log = logging.getLogger(__name__)

_UNOBSERVED = StageInstruments()


async def run_pipeline(
    stages: Sequence[Stage], state: RequestState, *, instruments: StageInstruments | None = None
) -> AsyncGenerator[tuple[str, StageEvent], None]:
    """Yield (event name, payload) per stage, then ("done", ProcessResult).

    A stage that fails yields an `error` event and then its safe default, flagged
    `fallback_used`, so a stream never ends in a 500 halfway. PipelineError (overload)
    is not a stage failure: it ends the request and propagates to the gateway.
    Each stage runs in its own span (a child of the caller's current span) and is timed.
    """
    instruments = instruments or _UNOBSERVED
    stage_span = instruments.spans()
    task = asyncio.current_task()  # the consumer's, for the whole run
    for stage in stages:
        raise_if_cancelled(task)  # a client gone during the last stage's outside call: no next stage
        failure: ErrorEvent | None = None
        outcome, started = "error", time.perf_counter()
        fallbacks_before = state.fallbacks  # fallback_used is the request's; this stage's is the change
        # Never yield inside the span: the consumer's code would run as the stage's child.
        with stage_span(f"stage.{stage.name}") as span:
            try:
                try:
                    event = await stage.run(state)
                    # A stage that answered through its own fallback (the LLM failed, the local
                    # classifier answered) did not fail, but did fall back.
                    outcome = "fallback" if state.fallbacks > fallbacks_before else "ok"
                except asyncio.CancelledError:  # the client left (or shutdown): not the stage's failure
                    outcome = "cancelled"
                    raise
                except PipelineError:
                    raise
                except Exception as exc:  # any other stage bug or dependency failure
                    log.warning("stage %s failed: %r", stage.name, exc, exc_info=exc)
                    span.fail(exc, f"{stage.name} stage failed")
                    state.fall_back(f"the {stage.name} stage failed; a safe default answered")
                    failure = ErrorEvent(
                        code="stage_failed", message=f"{stage.name} stage failed", stage=stage.name
                    )
                    event = stage.fallback(state)
                    outcome = "fallback"
            finally:
                # Whatever the outcome: a stage cut short by overload or a client gone says so too.
                if span.recording:
                    span.attributes = stage_span_attributes(stage.name, state, outcome)
                if instruments.duration is not None:
                    instruments.duration.record(time.perf_counter() - started, stage.name, outcome)
        if failure is not None:
            yield "error", _stamp(failure, state)
        yield stage.name, _stamp(event, state)
    yield "done", _stamp(build_result(state), state)


def _stamp(event: StageEvent, state: RequestState) -> StageEvent:
    event.elapsed_ms = state.elapsed_ms()
    event.trace_id = state.request.trace_id
    return event


def build_result(state: RequestState) -> ProcessResult:
    """The final answer from a state every stage has filled (or defaulted)."""
    intent, selection, arm = state.intent, state.selection, state.arm
    assert intent is not None and selection is not None and state.final_prompt is not None and arm is not None
    return ProcessResult(
        success=True,
        workflow_type=intent.workflow_type,
        final_prompt=state.final_prompt,
        model_selection=selection,
        references=state.references,
        intent_confidence=intent.confidence,
        intent_source=intent.source,
        cache_hit=state.cache_hit,
        reasoning=f"{intent.reasoning} | {selection.reasoning}",
        processing_time=state.elapsed_us() / 1_000_000,
        estimated_cost=selection.estimated_cost,
        estimated_time=selection.estimated_time,
        fallback_used=state.fallback_used,
        metadata=ResultMetadata(
            requires_web_search=intent.requires_web_search,
            web_search_query=intent.web_search_query,
            enhancement_applied=state.enhancement_applied,
            arm=arm,
            unknown_tags=state.unknown_tags,
            low_confidence=intent.low_confidence,
            no_clear_intent=intent.no_clear_intent,
            image_missing=state.image_missing(),
            fallback_reason=state.fallback_reason,
        ),
    )

