"""The intent stage: how classifications hold their slots."""

from __future__ import annotations

import asyncio

from pipeline.rollout import Rollout
from pipeline.slots import ClassificationSlots
from pipeline.stages.intent import IntentStage
from pipeline.state import Context, RequestState
from pipeline.types import (
    ClassifierInput,
    IntentClassification,
    IntentSource,
    PipelineRequest,
    WorkflowType,
)


class InlineClassifier:
    """Answers without awaiting, like the embedded classifier's fast tier; notes the slots it saw."""

    name = "local"
    version = "test"

    def __init__(self, slots: ClassificationSlots) -> None:
        self.slots = slots
        self.seen: list[tuple[int, int]] = []  # (in use, waiting) while classifying

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        self.seen.append((self.slots.in_use, self.slots.waiting))
        return IntentClassification(workflow_type=WorkflowType.IMAGE_GENERATION, confidence=0.9,
                                    reasoning="inline", source=IntentSource.LOCAL)


def state_for(prompt: str) -> RequestState:
    request = PipelineRequest(prompt=prompt, user_id="u1", trace_id="t")
    context = Context(user_id="u1", working_images=(), uploaded_images=(), mentions=())
    return RequestState(request=request, context=context)


async def test_concurrent_inline_classifications_never_queue_for_a_slot() -> None:
    # 64 streams, 8 slots: a classification that yields to the loop while holding its slot
    # lets the others fill all eight and queue (seen: -30% throughput on cache misses).
    slots = ClassificationSlots(8, queue_timeout=5)
    classifier = InlineClassifier(slots)
    stage = IntentStage(ai=classifier, slots=slots, rollout=Rollout())

    events = await asyncio.gather(*(stage.run(state_for(f"a cat number {i}")) for i in range(64)))

    assert [event.workflow_type for event in events] == [WorkflowType.IMAGE_GENERATION] * 64
    assert classifier.seen == [(1, 0)] * 64
    assert (slots.in_use, slots.waiting) == (0, 0)
