"""The model catalog: a data file with every workflow, costs per the app's plan."""

from __future__ import annotations

from typing import get_args

import pytest

from pipeline.catalog import Catalog
from pipeline.stages.model import ModelStage
from pipeline.state import RequestState
from pipeline.types import (
    IntentClassification,
    IntentSource,
    PipelineRequest,
    Preferences,
    Quality,
    WorkflowType,
)

W = WorkflowType


def intent(workflow: WorkflowType, confidence: float = 0.95) -> IntentClassification:
    return IntentClassification(
        workflow_type=workflow, confidence=confidence, reasoning="test", source=IntentSource.LOCAL
    )


def request(quality: Quality) -> PipelineRequest:
    return PipelineRequest(prompt="p", user_id="u", trace_id="t", preferences=Preferences(quality=quality))


@pytest.mark.parametrize(
    ("workflow", "model", "cost", "seconds"),
    [
        (W.HAIR_STYLING, "flux-kontext-apps/change-haircut", 0.05, 30),
        (W.REFERENCE_STYLING, "flux-kontext-apps/multi-image-kontext-max", 0.06, 30),
        (W.IMAGE_ENHANCEMENT, "flux-kontext-apps/restore-image", 0.04, 30),
        (W.IMAGE_EDITING, "zsxkib/flux-kontext-pro", 0.03, 30),
        (W.STYLE_TRANSFER, "flux-kontext-apps/cartoonify", 0.04, 30),
        (W.IMAGE_GENERATION, "black-forest-labs/flux-1.1-pro", 0.04, 30),
        (W.VIDEO_GENERATION, "google/veo-3", 7.5, 120),  # $0.75/s x 10 s
        (W.IMAGE_TO_VIDEO, "lightricks/ltx-video", 2.0, 90),  # $0.20/s x 10 s
        (W.TEXT_TO_VIDEO, "minimax/video-01", 1.8, 120),  # $0.30/s x 6 s
    ],
)
def test_balanced_models_match_the_plan(workflow: WorkflowType, model: str, cost: float, seconds: int) -> None:
    selection = Catalog.load().select(intent(workflow), "balanced")
    assert (selection.model_id, selection.estimated_cost, selection.estimated_time) == (model, cost, seconds)
    assert len(selection.fallback_models) >= 2 or workflow is W.IMAGE_GENERATION


def test_speed_and_quality_for_image_generation() -> None:
    catalog = Catalog.load()
    speed = catalog.select(intent(W.IMAGE_GENERATION), "speed")
    quality = catalog.select(intent(W.IMAGE_GENERATION), "quality")
    assert (speed.model_id, speed.estimated_cost, speed.estimated_time) == (
        "black-forest-labs/flux-schnell", 0.02, 15,
    )
    assert (quality.model_id, quality.estimated_cost, quality.estimated_time) == (
        "black-forest-labs/flux-1.1-pro-ultra", 0.08, 45,
    )


def test_low_confidence_is_said_in_the_reasoning() -> None:
    selection = Catalog.load().select(intent(W.IMAGE_EDITING, confidence=0.55), "balanced")
    assert "intent confidence 0.55, under 0.8" in selection.reasoning


def test_catalog_missing_a_workflow_is_refused() -> None:
    text = 'provider = "x"\n[workflows.image_generation]\nunit = "generation"\n'
    text += '[workflows.image_generation.balanced]\nmodel = "m"\nfallbacks = []\nprice = 0.1\ntime_s = 1\n'
    with pytest.raises(ValueError, match="lacks workflows"):
        Catalog.load(text)


@pytest.mark.parametrize("confidence", [0.95, 0.8, 0.7999, 0.3])
async def test_the_model_stage_prices_as_the_catalog(confidence: float) -> None:
    """The stage prices every workflow once, at start-up; its answers are the catalog's."""
    catalog = Catalog.load()
    stage = ModelStage(catalog)
    for workflow in WorkflowType:
        for quality in get_args(Quality):
            state = RequestState(request=request(quality), intent=intent(workflow, confidence))
            await stage.run(state)
            assert state.selection == catalog.select(intent(workflow, confidence), quality)
            assert ("intent confidence" in state.selection.reasoning) == (confidence < 0.8)
    state = RequestState(request=request("balanced"), intent=intent(W.VIDEO_GENERATION, confidence))
    await stage.run(state)
    assert state.selection is not None
    note = {0.95: "", 0.8: "", 0.7999: "; intent confidence 0.79, under 0.8",
            0.3: "; intent confidence 0.30, under 0.8"}[confidence]
    assert state.selection.reasoning == f"Selected google/veo-3 for video_generation (balanced, 10s at $0.75/s){note}"
    state.selection.fallback_models.append("mutated")  # a request's own list: the next is unchanged
    again = RequestState(request=request("balanced"), intent=intent(W.VIDEO_GENERATION))
    await stage.run(again)
    assert again.selection is not None and "mutated" not in again.selection.fallback_models
