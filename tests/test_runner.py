"""The pipeline runner: each stage's outcome, as the stage duration metric records it."""

from __future__ import annotations

import contextlib

from observability.tracing import StageInstruments
from pipeline.events import StageEvent
from pipeline.runner import run_pipeline
from pipeline.state import RequestState
from pipeline.types import PipelineRequest


class Outcomes:
    """The stage duration histogram's labels, as recorded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def record(self, seconds: float, stage: str, outcome: str) -> None:
        self.seen.append((stage, outcome))


class Failing:
    name = "first"

    async def run(self, state: RequestState) -> StageEvent:
        raise RuntimeError("a dependency broke")

    def fallback(self, state: RequestState) -> StageEvent:
        return StageEvent()


class AnswersThroughItsOwnFallback:
    """As the intent stage does when the LLM fails and the embedded classifier answers."""

    name = "second"

    async def run(self, state: RequestState) -> StageEvent:
        state.fall_back("the llm classifier failed (timeout); the local classifier answered")
        return StageEvent()

    def fallback(self, state: RequestState) -> StageEvent:
        return StageEvent()


class Fine:
    name = "third"

    async def run(self, state: RequestState) -> StageEvent:
        return StageEvent()

    def fallback(self, state: RequestState) -> StageEvent:
        return StageEvent()


async def test_each_stage_that_falls_back_is_counted_as_such_even_after_another_did() -> None:
    """The request's fallback_used was already set by the first stage: the second's own fallback
    still counts as its fallback (it was read as `ok`), and the third, which did not, as `ok`."""
    outcomes = Outcomes()
    state = RequestState(request=PipelineRequest(prompt="p", user_id="u", trace_id="t"))
    events = run_pipeline((Failing(), AnswersThroughItsOwnFallback(), Fine()), state,
                          instruments=StageInstruments(duration=outcomes))  # type: ignore[arg-type]
    async with contextlib.aclosing(events):
        async for name, _ in events:
            if name == "third":
                break
    assert outcomes.seen == [("first", "fallback"), ("second", "fallback"), ("third", "ok")]
    assert state.fallback_used and state.fallbacks == 2
    assert state.fallback_reason == "the first stage failed; a safe default answered"  # the first one
