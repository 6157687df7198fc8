"""Stage 3: which hosted generation model serves the workflow, at what cost and time."""

from __future__ import annotations

import msgspec

from pipeline.catalog import Catalog, with_confidence_note
from pipeline.events import ModelEvent
from pipeline.state import RequestState
from pipeline.types import IntentClassification, IntentSource, WorkflowType


class ModelStage:
    name = "model"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._prices = catalog.price_list()  # formatting a price per request was ~2% of a cached answer

    async def run(self, state: RequestState) -> ModelEvent:
        intent = state.intent
        assert intent is not None
        priced = self._prices[intent.workflow_type, state.request.preferences.quality]
        # A list of its own per request: the price list's is shared by all of them.
        selection = msgspec.structs.replace(priced, fallback_models=list(priced.fallback_models))
        state.selection = with_confidence_note(selection, intent.confidence)
        return self._event(state)

    def fallback(self, state: RequestState) -> ModelEvent:
        # The plan's safe default: plain image generation on the balanced model.
        default = IntentClassification(
            workflow_type=WorkflowType.IMAGE_GENERATION,
            confidence=0.5,
            reasoning="model selection failed; safe default",
            source=IntentSource.RULES,
        )
        state.intent = state.intent or default
        state.selection = self.catalog.select(default, "balanced")
        return self._event(state)

    @staticmethod
    def _event(state: RequestState) -> ModelEvent:
        selection = state.selection
        assert selection is not None
        return ModelEvent(
            model_id=selection.model_id,
            provider=selection.provider,
            reasoning=selection.reasoning,
            fallback_models=selection.fallback_models,
            estimated_cost=selection.estimated_cost,
            estimated_time=selection.estimated_time,
        )
