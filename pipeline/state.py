"""The per-request state the stages read and fill in, in order."""

from __future__ import annotations

import time

import msgspec

from pipeline.types import (
    IMAGE_INPUT_WORKFLOWS,
    Arm,
    ClassifierInput,
    IntentClassification,
    ModelSelection,
    PipelineRequest,
    Reference,
)


class Context(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    working_images: tuple[str, ...]
    uploaded_images: tuple[str, ...]
    mentions: tuple[str, ...]

    def has_own_image(self) -> bool:
        return bool(self.working_images or self.uploaded_images)

    def may_bring_an_image(self) -> bool:
        """An image of the user's own, or a @mention that may resolve to a saved one."""
        return self.has_own_image() or bool(self.mentions)

    def classifier_input(self, prompt: str) -> ClassifierInput:
        return ClassifierInput(
            prompt=prompt,
            working_images=self.working_images,
            uploaded_images=self.uploaded_images,
            mentions=self.mentions,
        )


class RequestState(msgspec.Struct, kw_only=True):
    request: PipelineRequest
    started: float = msgspec.field(default_factory=time.perf_counter)  # the gateway's: arrival
    context: Context | None = None
    intent: IntentClassification | None = None
    arm: Arm | None = None  # set as the intent stage starts: which A/B arm classifies
    cache_hit: bool = False
    selection: ModelSelection | None = None
    final_prompt: str | None = None
    enhancement_applied: bool = False
    references: list[Reference] = msgspec.field(default_factory=list)
    unknown_tags: list[str] = msgspec.field(default_factory=list)
    reference_search: str | None = None  # "skipped" | "failed" | "found N" when that step ran
    fallback_reason: str | None = None  # why, in words, for the frontend (the first one)
    fallbacks: int = 0  # how many times a stage fell back: a stage's own fallback is the change
    last_fallback_reason: str | None = None  # the latest one: the stage span's, which may differ
    # The trace of the request whose classification this one waited for (identical concurrent
    # misses share one): the LLM call and the cache write are in that trace, not this one.
    coalesced_with: str | None = None

    def image_missing(self) -> bool:
        """The workflow works on an image and the request brings none: its own, or a saved one
        a @tag resolved to (final once the prompt stage has resolved them)."""
        intent, context = self.intent, self.context
        if intent is None or intent.workflow_type not in IMAGE_INPUT_WORKFLOWS:
            return False
        has_own = context is not None and context.has_own_image()
        return not (has_own or any(reference.kind == "user_tag" for reference in self.references))

    @property
    def fallback_used(self) -> bool:
        return self.fallbacks > 0

    def fall_back(self, reason: str) -> None:
        """A stage answered with a fallback: the request says so, with the first reason."""
        self.fallbacks += 1
        self.last_fallback_reason = reason
        if self.fallback_reason is None:
            self.fallback_reason = reason

    def joined(self, leader_trace_id: str) -> None:
        self.coalesced_with = leader_trace_id

    def elapsed_us(self) -> int:
        return int((time.perf_counter() - self.started) * 1_000_000)

    def elapsed_ms(self) -> float:
        # Whole microseconds over 1000 print as short as round(x, 3) does, at a third of its
        # cost (float rounding to digits goes through a decimal string); called per event.
        return self.elapsed_us() / 1000
