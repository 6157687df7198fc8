"""The enhanced prompt: short prompts enriched, and the user's style and format said where they apply."""

from __future__ import annotations

from typing import Any

from pipeline.enhance import enhance
from pipeline.types import Preferences
from pipeline.types import WorkflowType as W

NONE = Preferences()


def test_a_short_prompt_gets_its_workflows_detail_and_a_long_one_is_left_as_written() -> None:
    assert enhance("a cat.", W.IMAGE_GENERATION, NONE) == "a cat, high quality, detailed, professional"
    long = "a lighthouse on a cliff at dawn with gulls over the water"
    assert enhance(long, W.IMAGE_GENERATION, NONE) == long


def test_style_and_format_shape_what_is_made_from_words() -> None:
    prefs = Preferences(style="anime", format="16:9")
    assert enhance("a cat", W.IMAGE_GENERATION, prefs) == (
        "a cat, anime style, high quality, detailed, professional, 16:9 aspect ratio"
    )
    long = "a lighthouse on a cliff at dawn with gulls over the water"
    assert enhance(long, W.TEXT_TO_VIDEO, Preferences(format="portrait")) == f"{long}, portrait orientation"


def test_an_edit_of_the_users_image_keeps_its_style_and_shape() -> None:
    """The working image already has a look and an aspect ratio: no preference overrides them."""
    prefs = Preferences(style="anime", format="16:9")
    assert enhance("make it brighter", W.IMAGE_ENHANCEMENT, prefs) == (
        "make it brighter, sharp details, natural colors, high resolution"
    )
    assert enhance("turn this photo into a painting", W.STYLE_TRANSFER, Preferences(style="oil_painting",
                                                                                    format="1:1")) == (
        "turn this photo into a painting, oil painting, faithful composition, strong artistic style"
    )  # fmt: skip


def test_what_the_prompt_or_its_detail_already_says_is_not_said_twice() -> None:
    long = "a watercolor painting of a lighthouse at dawn, 16:9 aspect ratio please"
    assert enhance(long, W.IMAGE_GENERATION, Preferences(style="watercolor", format="16:9")) == long
    assert enhance("waves", W.VIDEO_GENERATION, Preferences(style="cinematic")) == (
        "waves, cinematic, smooth motion, synchronized audio"
    )
    castle = "a 3D render of a castle on a hill at night under a full moon"  # said in other case
    assert enhance(castle, W.IMAGE_GENERATION, Preferences(style="3d_render")) == castle


async def test_process_answers_with_the_preferred_style_in_the_final_prompt(client: Any) -> None:
    body = {"prompt": "a cat on a sofa", "user_preferences": {"style": "watercolor", "format": "square"}}
    result = await (await client.post("/api/v1/enhanced/process", json=body)).json()
    assert result["workflow_type"] == "image_generation"
    assert result["final_prompt"] == "a cat on a sofa, watercolor painting, high quality, detailed, professional, square format"
    assert result["metadata"]["enhancement_applied"] is True
