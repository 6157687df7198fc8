"""What each stage reports: the payload of one SSE event (the event name is the stage name)."""

from __future__ import annotations

from typing import Literal

import msgspec

from pipeline.types import (
    Arm,
    IntentSource,
    ModelSelection,
    Preferences,
    Reference,
    WorkflowType,
)


class StageEvent(msgspec.Struct, kw_only=True):
    # Set by the runner when the event is emitted, so every event carries them.
    elapsed_ms: float = 0.0
    trace_id: str = ""


class ContextEvent(StageEvent, kw_only=True):
    user_id: str
    working_images: list[str]
    uploaded_images: list[str]
    mentions: list[str]
    preferences: Preferences
    word_count: int


class IntentEvent(StageEvent, kw_only=True):
    workflow_type: WorkflowType
    confidence: float
    source: IntentSource
    reasoning: str
    cache_hit: bool
    arm: str
    requires_web_search: bool
    web_search_query: str | None
    low_confidence: bool
    no_clear_intent: bool  # as in the result's metadata: the frontend can ask the user now
    # The workflow works on an image and the request brings none (no image of its own, no
    # @mention): ask for one now. The result's metadata has the last word once @tags resolve.
    image_missing: bool


class ModelEvent(StageEvent, kw_only=True):
    model_id: str
    provider: str
    reasoning: str
    fallback_models: list[str]
    estimated_cost: float
    estimated_time: int


class PromptEvent(StageEvent, kw_only=True):
    final_prompt: str
    enhancement_applied: bool
    references: list[Reference]
    unknown_tags: list[str]


class ReferencesEvent(StageEvent, kw_only=True):
    """The reference search step: `summary` is `skipped`, `failed` or `found N`."""

    outcome: Literal["skipped", "failed", "found"]
    summary: str
    count: int
    query: str | None
    provider: str
    reason: str | None
    cache_hit: bool
    references: list[Reference]  # this step's search results only; @tags are in `prompt`


class ErrorEvent(StageEvent, kw_only=True):
    code: str
    message: str
    stage: str | None = None


class ResultMetadata(msgspec.Struct, kw_only=True):
    requires_web_search: bool
    web_search_query: str | None
    enhancement_applied: bool
    arm: Arm
    unknown_tags: list[str]
    low_confidence: bool
    # The prompt asks for nothing a workflow makes ("hi", "do something"): `workflow_type` is the
    # safe default, and the frontend can ask what the user wants before generating.
    no_clear_intent: bool
    # The workflow works on an image and the request brought none (no working image, upload or
    # resolved @tag): the frontend can ask for one before anything is generated.
    image_missing: bool
    # With fallback_used: what failed and what answered instead, in words.
    fallback_reason: str | None


class ProcessResult(StageEvent, kw_only=True):
    """The whole answer: the /process JSON and the data of the stream's `done` event.

    Field names are what the existing frontend reads; keep them.
    """

    success: bool
    workflow_type: WorkflowType
    final_prompt: str
    model_selection: ModelSelection
    references: list[Reference]
    intent_confidence: float
    intent_source: IntentSource
    cache_hit: bool
    reasoning: str
    processing_time: float  # seconds
    estimated_cost: float
    estimated_time: int
    fallback_used: bool
    metadata: ResultMetadata
