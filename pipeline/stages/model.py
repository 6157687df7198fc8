"""Stage 3: which hosted generation model serves the workflow, at what cost and time."""

from __future__ import annotations

from pipeline.catalog import Catalog
from pipeline.events import ModelEvent
from pipeline.state import RequestState
from pipeline.types import IntentClassification, IntentSource, WorkflowType


class ModelStage:
    name = "model"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def run(self, state: RequestState) -> ModelEvent:
        assert state.intent is not None
        state.selection = self.catalog.select(state.intent, state.request.preferences.quality)
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
