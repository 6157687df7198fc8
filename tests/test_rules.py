"""The existing keyword rules, with their two known bugs fixed."""

from __future__ import annotations

import pytest

from pipeline.classifiers.rules import RulesClassifier
from pipeline.types import ClassifierInput, IntentSource, WorkflowType

W = WorkflowType
IMAGE = ("https://a.supabase.co/me.jpg",)


def classify(prompt: str, images: tuple[str, ...] = ()) -> WorkflowType:
    return RulesClassifier().classify_sync(ClassifierInput(prompt, working_images=images)).workflow_type


@pytest.mark.parametrize(
    ("prompt", "images", "expected"),
    [
        ("change my hair to blonde", IMAGE, W.HAIR_STYLING),  # image no longer hides hair styling
        ("put @sarah in this red dress", IMAGE, W.REFERENCE_STYLING),
        ("animate this sunset", IMAGE, W.IMAGE_TO_VIDEO),
        ("animate this into a short video", (), W.IMAGE_TO_VIDEO),  # most specific keyword wins
        ("a music video about summer", (), W.VIDEO_GENERATION),
        ("a video of a fox in snow", (), W.TEXT_TO_VIDEO),
        ("make a video of this", IMAGE, W.IMAGE_TO_VIDEO),
        ("upscale and sharpen", IMAGE, W.IMAGE_ENHANCEMENT),
        ("make it a watercolor painting", IMAGE, W.STYLE_TRANSFER),
        ("a lighthouse at dawn", (), W.IMAGE_GENERATION),
        ("remove the car", IMAGE, W.IMAGE_EDITING),  # no keyword, image in hand
        ("the solar eclipse", (), W.IMAGE_GENERATION),  # "clip" inside a word does not count
    ],
)
def test_rules(prompt: str, images: tuple[str, ...], expected: WorkflowType) -> None:
    assert classify(prompt, images) is expected


def test_named_looks_ask_for_a_web_search() -> None:
    """Celebrity and event looks carry a search query built from the names, not the prompt: the
    one the references stage searches for (it said "met gala zendaya look", and searched another)."""
    result = RulesClassifier().classify_sync(ClassifierInput("dress me like zendaya at the met gala"))
    assert result.workflow_type is W.REFERENCE_STYLING
    assert result.requires_web_search is True
    assert result.web_search_query == "Zendaya Met Gala look"
    assert result.source is IntentSource.RULES


def test_short_prompts_need_enhancement() -> None:
    assert RulesClassifier().classify_sync(ClassifierInput("a cat")).enhancement_needed is True


def test_a_prompt_no_keyword_matches_gets_the_default_flagged_low() -> None:
    """The default is a guess: low_confidence, so the stream's intent event and the result say so
    (the frontend may ask the user); a matched keyword is not flagged."""
    guessed = RulesClassifier().classify_sync(ClassifierInput("remove the car", working_images=IMAGE))
    assert guessed.workflow_type is W.IMAGE_EDITING and guessed.low_confidence
    assert not RulesClassifier().classify_sync(ClassifierInput("change my hair to blonde")).low_confidence
