"""Domain types shared by every stage and classifier."""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec


class WorkflowType(str, enum.Enum):
    IMAGE_GENERATION = "image_generation"
    VIDEO_GENERATION = "video_generation"  # video with audio
    IMAGE_TO_VIDEO = "image_to_video"  # animate an existing image
    TEXT_TO_VIDEO = "text_to_video"  # video from text, no audio
    IMAGE_EDITING = "image_editing"
    IMAGE_ENHANCEMENT = "image_enhancement"
    REFERENCE_STYLING = "reference_styling"  # celebrity/event/fashion looks, virtual try-on
    HAIR_STYLING = "hair_styling"
    STYLE_TRANSFER = "style_transfer"


# Workflows that change or animate an image the user brings: a working image, an upload, or
# the image behind an @tag.
IMAGE_INPUT_WORKFLOWS = frozenset({
    WorkflowType.IMAGE_TO_VIDEO, WorkflowType.IMAGE_EDITING, WorkflowType.IMAGE_ENHANCEMENT,
    WorkflowType.REFERENCE_STYLING, WorkflowType.HAIR_STYLING, WorkflowType.STYLE_TRANSFER,
})  # fmt: skip
# The embedded classifier's tenth label, for prompts that ask for nothing a workflow makes ("hi",
# "thanks", "do something"): trained on, never answered. The gateway answers the rules' default
# workflow with `no_clear_intent`, so the frontend can ask what the user wants.
NO_CLEAR_INTENT = "unclear"
# What the embedded classifier is trained on and an eval file may expect.
LABELS = (*(workflow.value for workflow in WorkflowType), NO_CLEAR_INTENT)


class IntentSource(str, enum.Enum):
    LLM = "llm"
    LOCAL = "local"
    RULES = "rules"


Quality = Literal["speed", "balanced", "quality"]
Style = Literal[
    "photorealistic", "cinematic", "anime", "cartoon", "watercolor", "oil_painting", "sketch",
    "digital_art", "3d_render", "vintage", "minimalist",
]
Format = Literal["square", "portrait", "landscape", "1:1", "4:3", "3:4", "16:9", "9:16"]
Arm = Literal["ai", "existing"]
# What runs MiniLM for the embedded classifier's escalated prompts (LOCAL_RUNTIME).
MiniLMRuntime = Literal["onnx-int8", "onnx", "numpy"]


class Preferences(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    quality: Quality = "balanced"
    style: Style | None = None
    format: Format | None = None


class ClassifierInput(msgspec.Struct, frozen=True):
    """What a classifier may look at: the prompt and the context features."""

    prompt: str
    working_images: tuple[str, ...] = ()
    uploaded_images: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()  # "@sarah" tags, lower-cased, without the '@'

    @property
    def has_image(self) -> bool:
        """A working image or an upload to work on (an @tag's image is not the classifier's)."""
        return bool(self.working_images or self.uploaded_images)


class IntentClassification(msgspec.Struct, frozen=True, kw_only=True):
    workflow_type: WorkflowType
    confidence: float  # 0..1
    reasoning: str
    source: IntentSource
    requires_web_search: bool = False
    web_search_query: str | None = None
    enhancement_needed: bool = False
    metadata: dict[str, Any] = {}

    @property
    def low_confidence(self) -> bool:
        """The classifier is unsure (the cascade asks the LLM; the frontend may ask the user)."""
        return bool(self.metadata.get("low_confidence", False))

    @property
    def no_clear_intent(self) -> bool:
        """The prompt asks for nothing a workflow makes: `workflow_type` is the safe default."""
        return bool(self.metadata.get("no_clear_intent", False))


class ModelSelection(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    provider: str
    reasoning: str
    fallback_models: list[str]
    estimated_cost: float  # US dollars
    estimated_time: int  # seconds


class Reference(msgspec.Struct, frozen=True, kw_only=True):
    """An image the generation model should look at: a user's @tag or a search result."""

    kind: Literal["user_tag", "search"]
    image_url: str
    tag: str | None = None
    title: str | None = None
    source_url: str | None = None


class PipelineRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A validated request: the gateway builds it, stages trust it."""

    prompt: str
    user_id: str
    trace_id: str
    working_image_url: str | None = None
    uploaded_image_urls: tuple[str, ...] = ()
    preferences: Preferences = Preferences()
    use_ai_classification: bool = True
    # /compare's AI half: the AI arm whatever the rollout's percentage says for this user.
    ignore_rollout: bool = False
