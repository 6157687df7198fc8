"""The cascade (local first, LLM when unsure) and the llm -> local -> rules fallback chain."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.classifiers.cascade import CascadeClassifier, FallbackClassifier
from pipeline.classifiers.llm import LLMFailed
from pipeline.llm_usage import LLMUsage
from pipeline.types import ClassifierInput, IntentClassification, IntentSource, WorkflowType


class Scripted:
    """A classifier answering each prompt with the workflow and confidence the test chose."""

    def __init__(
        self, name: str, source: IntentSource, script: dict[str, tuple[WorkflowType, float]]
    ) -> None:
        self.name = name
        self.version = f"{name}-1"
        self.source = source
        self.script = script
        self.seen: list[str] = []

    async def quick_answer(self, query: Any) -> None:
        return None  # answers only by awaiting

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        self.seen.append(query.prompt)
        workflow, confidence = self.script[query.prompt]
        return IntentClassification(
            workflow_type=workflow, confidence=confidence, reasoning="scripted", source=self.source
        )


class Broken:
    name = "llm"
    version = "broken-1"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    async def quick_answer(self, query: Any) -> None:
        return None  # answers only by awaiting

    async def classify(self, query: Any) -> Any:
        self.calls += 1
        raise self.exc


W = WorkflowType
LOCAL = {
    "make my hair blonde": (W.HAIR_STYLING, 0.95),
    "something with the sunset vibe": (W.IMAGE_GENERATION, 0.35),
    "animate my cat please": (W.IMAGE_TO_VIDEO, 0.81),
    "fix it": (W.IMAGE_EDITING, 0.59),
}
LLM = {prompt: (W.STYLE_TRANSFER, 0.9) for prompt in LOCAL}


async def test_cascade_escalates_only_low_confidence() -> None:
    """Confident local answers stand; only those under the threshold reach the LLM."""
    usage = LLMUsage()
    local = Scripted("local", IntentSource.LOCAL, LOCAL)
    llm = Scripted("llm", IntentSource.LLM, LLM)
    cascade = CascadeClassifier(local, llm, threshold=0.6, usage=usage)
    results = {p: await cascade.classify(ClassifierInput(prompt=p)) for p in LOCAL}
    assert llm.seen == ["something with the sunset vibe", "fix it"]
    assert results["make my hair blonde"].source is IntentSource.LOCAL
    assert results["animate my cat please"].workflow_type is W.IMAGE_TO_VIDEO
    assert results["fix it"].source is IntentSource.LLM
    assert results["fix it"].workflow_type is W.STYLE_TRANSFER
    snapshot: Any = usage.snapshot()
    assert snapshot["cascade"] == {"kept_local": 2, "escalated": 2, "kept_local_share": 0.5}


async def test_cascade_honours_the_local_low_confidence_flag() -> None:
    """A local answer that calls itself low-confidence escalates whatever its score."""

    class Flagging(Scripted):
        async def classify(self, query: ClassifierInput) -> IntentClassification:
            result = await super().classify(query)
            return IntentClassification(
                workflow_type=result.workflow_type,
                confidence=result.confidence,
                reasoning="near the decision boundary",
                source=IntentSource.LOCAL,
                metadata={"low_confidence": True},
            )

    llm = Scripted("llm", IntentSource.LLM, LLM)
    cascade = CascadeClassifier(
        Flagging("local", IntentSource.LOCAL, LOCAL), llm, threshold=0.6, usage=LLMUsage()
    )
    result = await cascade.classify(ClassifierInput(prompt="make my hair blonde"))
    assert result.source is IntentSource.LLM


async def test_cascade_falls_back_to_the_local_answer() -> None:
    """If the LLM fails, the local answer stands, marked as a fallback from the LLM."""
    usage = LLMUsage()
    local = Scripted("local", IntentSource.LOCAL, LOCAL)
    cascade = CascadeClassifier(local, Broken(LLMFailed("circuit_open")), threshold=0.6, usage=usage)
    result = await cascade.classify(ClassifierInput(prompt="fix it"))
    assert result.source is IntentSource.LOCAL
    assert result.workflow_type is W.IMAGE_EDITING
    assert result.metadata == {
        "fallback_used": True, "fallback_from": "llm", "fallback_reason": "circuit_open"
    }
    assert local.seen == ["fix it"]  # not asked twice
    assert usage.fallbacks == 1


async def test_cascade_with_a_broken_first_classifier_uses_the_rules() -> None:
    """A first classifier that raises is replaced by the rules, and the LLM still decides."""
    llm = Scripted("llm", IntentSource.LLM, {"video of waves with ocean sounds": (W.VIDEO_GENERATION, 0.9)})
    first = Broken(RuntimeError("model file missing"))
    cascade = CascadeClassifier(first, llm, threshold=0.9, usage=LLMUsage())
    result = await cascade.classify(ClassifierInput(prompt="video of waves with ocean sounds"))
    assert result.source is IntentSource.LLM  # rules said 0.6 < 0.9: escalated


class BrokenAtOnce(Broken):
    async def quick_answer(self, query: Any) -> None:
        self.calls += 1
        raise self.exc


async def test_cascade_with_a_first_classifier_failing_at_once_still_answers() -> None:
    """An exception from the first classifier's `quick_answer` is its failure, not the request's:
    `classify` goes on to the rules and the LLM, as it does when `classify` itself raises."""
    llm = Scripted("llm", IntentSource.LLM, {"video of waves with ocean sounds": (W.VIDEO_GENERATION, 0.9)})
    first = BrokenAtOnce(RuntimeError("tokenizer bug"))
    cascade = CascadeClassifier(first, llm, threshold=0.9, usage=LLMUsage())
    query = ClassifierInput(prompt="video of waves with ocean sounds")
    assert await cascade.quick_answer(query) is None
    result = await cascade.classify(query)
    assert result.source is IntentSource.LLM and first.calls == 2


@pytest.mark.parametrize("exc", [LLMFailed("status_500"), RuntimeError("sdk bug")])
async def test_llm_mode_falls_back_local_then_rules(exc: Exception) -> None:
    """INTENT_CLASSIFIER=llm: on failure the local classifier answers; without it, the rules."""
    usage = LLMUsage()
    local = Scripted("local", IntentSource.LOCAL, LOCAL)
    with_local = FallbackClassifier(Broken(exc), usage=usage, fallbacks=(local,))
    result = await with_local.classify(ClassifierInput(prompt="make my hair blonde"))
    assert result.source is IntentSource.LOCAL
    assert result.metadata["fallback_from"] == "llm"

    rules_only = FallbackClassifier(Broken(exc), usage=usage)
    result = await rules_only.classify(ClassifierInput(prompt="make my hair blonde"))
    assert result.source is IntentSource.RULES
    assert result.workflow_type is W.HAIR_STYLING
    assert result.metadata["fallback_from"] == "llm"
    assert usage.fallbacks == 2
