"""Quick, rule-based prompt enhancement: no model call, so it costs microseconds."""

from __future__ import annotations

from pipeline.types import WorkflowType

W = WorkflowType

# Prompts shorter than this many words get workflow-specific detail appended.
SHORT_PROMPT_WORDS = 8

SUFFIXES: dict[WorkflowType, str] = {
    W.IMAGE_GENERATION: "high quality, detailed, professional",
    W.HAIR_STYLING: "professional hair styling, natural hairline, high detail",
    W.REFERENCE_STYLING: "high quality styling, professional photography",
    W.IMAGE_EDITING: "seamless edit, consistent lighting, high quality",
    W.IMAGE_ENHANCEMENT: "sharp details, natural colors, high resolution",
    W.STYLE_TRANSFER: "faithful composition, strong artistic style",
    W.VIDEO_GENERATION: "cinematic, smooth motion, synchronized audio",
    W.IMAGE_TO_VIDEO: "smooth natural motion, stable subject",
    W.TEXT_TO_VIDEO: "cinematic, smooth motion, detailed scene",
}


def enhance(prompt: str, workflow: WorkflowType) -> str:
    """Append workflow detail to short prompts; longer prompts already say what they want."""
    if len(prompt.split()) >= SHORT_PROMPT_WORDS:
        return prompt
    return f"{prompt.rstrip(' .,;')}, {SUFFIXES[workflow]}"
