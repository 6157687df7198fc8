"""The model catalog: which hosted generation model serves each workflow, at what cost."""

from __future__ import annotations

import math
from importlib import resources
from typing import Literal, get_args

import msgspec

from pipeline.types import IntentClassification, ModelSelection, Quality, WorkflowType


class Tier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    fallbacks: list[str]
    price: float
    time_s: int


class WorkflowModels(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    unit: Literal["generation", "second"]
    balanced: Tier
    speed: Tier | None = None
    quality: Tier | None = None
    duration_s: int = 1


class Catalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: str
    workflows: dict[WorkflowType, WorkflowModels]

    @classmethod
    def load(cls, text: str | None = None) -> Catalog:
        """Parse the catalog (the packaged catalog.toml by default); every workflow must be there."""
        if text is None:
            text = resources.files("pipeline").joinpath("catalog.toml").read_text("utf-8")
        catalog = msgspec.toml.decode(text, type=cls)
        missing = set(WorkflowType) - set(catalog.workflows)
        if missing:
            raise ValueError(f"catalog lacks workflows: {sorted(w.value for w in missing)}")
        return catalog

    def select(self, intent: IntentClassification, quality: Quality) -> ModelSelection:
        return with_confidence_note(self.price(intent.workflow_type, quality), intent.confidence)

    def price(self, workflow: WorkflowType, quality: Quality) -> ModelSelection:
        """The workflow's model at the preferred quality (balanced when it has no such tier)."""
        entry = self.workflows[workflow]
        tier = getattr(entry, quality) or entry.balanced
        if entry.unit == "second":
            cost = tier.price * entry.duration_s
            basis = f"{entry.duration_s}s at ${tier.price:.2f}/s"
        else:
            cost = tier.price
            basis = "per generation"
        return ModelSelection(
            model_id=tier.model,
            provider=self.provider,
            reasoning=f"Selected {tier.model} for {workflow.value} ({quality}, {basis})",
            fallback_models=list(tier.fallbacks),
            estimated_cost=round(cost, 4),
            estimated_time=tier.time_s,
        )

    def price_list(self) -> dict[tuple[WorkflowType, Quality], ModelSelection]:
        """Every workflow at every quality, priced once: a selection depends on nothing else."""
        return {(w, q): self.price(w, q) for w in WorkflowType for q in get_args(Quality)}


NOTED_BELOW = 0.8  # the app plan's line for a note on the selection (low_confidence has its own)


def with_confidence_note(selection: ModelSelection, confidence: float) -> ModelSelection:
    if confidence >= NOTED_BELOW:
        return selection
    # Said as a number against this line, not as "low": metadata.low_confidence (the classifier's
    # threshold, 0.6 by default) may be false for the same answer.
    shown = math.floor(confidence * 100) / 100  # truncated: 0.799 is not "0.80, under 0.8"
    reasoning = f"{selection.reasoning}; intent confidence {shown:.2f}, under {NOTED_BELOW:g}"
    return msgspec.structs.replace(selection, reasoning=reasoning)
