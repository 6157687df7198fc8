"""The enhanced prompt: short prompts enriched, and the user's style and format said where they apply."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.enhance import SHORT_PROMPT_WORDS, enhance, word_count
from pipeline.types import Preferences
from pipeline.types import WorkflowType as W

NONE = Preferences()


def test_a_short_prompt_gets_its_workflows_detail_and_a_long_one_is_left_as_written() -> None:
    assert enhance("a cat", W.IMAGE_GENERATION, NONE) == "a cat, high quality, detailed, professional"
    long = "a lighthouse on a cliff at dawn with gulls over the water"
    assert enhance(long, W.IMAGE_GENERATION, NONE) == long


@pytest.mark.parametrize(("prompt", "enhanced"), [
    # The user's punctuation stays; after a sentence's end the detail follows a space, not ", ".
    ("make my hair blue!", "make my hair blue! professional hair styling, natural hairline, high detail"),
    ("portrait of Martin Luther King Jr.", "portrait of Martin Luther King Jr. high quality, detailed, professional"),
    ("a fox...", "a fox... high quality, detailed, professional"),
    ("can you make me a logo?", "can you make me a logo? high quality, detailed, professional"),
    # A separator left dangling is the list's to say.
    ("a castle at dawn:", "a castle at dawn, high quality, detailed, professional"),
    ("a cat,", "a cat, high quality, detailed, professional"),
    ("a castle in the clouds -", "a castle in the clouds, high quality, detailed, professional"),
    ("\u753b\u4e00\u53ea\u732b\uff0c", "\u753b\u4e00\u53ea\u732b, high quality, detailed, professional"),
])  # fmt: skip
def test_the_detail_joins_the_prompt_without_changing_its_punctuation(prompt: str, enhanced: str) -> None:
    workflow = W.HAIR_STYLING if "hair" in prompt else W.IMAGE_GENERATION
    assert enhance(prompt, workflow, NONE) == enhanced


def test_words_are_counted_in_scripts_written_without_spaces() -> None:
    """By spaces alone a long Japanese or Chinese sentence was one word: a "short prompt"."""
    japanese = "夕焼けの海辺を歩く白い犬と、その後ろに広がる紫色の空、遠くに見える灯台の光が水面に反射している幻想的な風景"
    chinese = "一只白色的小狗在夕阳下的海边奔跑\uff0c远处的灯塔发出温暖的光芒"
    for long in (japanese, chinese):
        assert word_count(long) >= SHORT_PROMPT_WORDS
        assert enhance(long, W.IMAGE_GENERATION, NONE) == long
    assert word_count("白い猫") == 1 and enhance("白い猫", W.IMAGE_GENERATION, NONE) != "白い猫"
    assert word_count("a red fox in the snow") == 6 and word_count("un zorro rojo en la nieve") == 6


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


@pytest.mark.parametrize("prompt", [
    "a watercolor painting of a fox in the snow at dawn",
    "an anime girl on a rooftop",
    "a photo of my street at night",
    "a pencil sketch of an old tree",
    "a 3D render of a castle",
    "cinematic shot of a rainy street",
    "a Studio Ghibli style forest",
    "a robot in the style of Van Gogh",
    "a charcoal drawing of my grandfather",
    # A QA pass's finds: other languages' words, a photo not followed by "of".
    "\u6c34\u5f69\u753b\u306e\u732b",  # Japanese: a watercolor of a cat
    "\u4e00\u5e45\u6c34\u58a8\u753b\u98ce\u683c\u7684\u5c71\u6c34\u753b",  # Chinese: an ink-wash landscape
    "un gato pintado en acuarela",
    "ein \u00d6lgem\u00e4lde eines alten Hafens",
    "a photograph taken at dusk of a city skyline",
    "a black and white photo, 1950s diner",
    # A second QA pass's finds: adjectives and franchises that name a look, more languages.
    "a realistic dog", "a kawaii chibi fox", "turn me into a simpsons character", "a flat vector icon of a cat",
    "desenho a l\u00e1pis de um gato", "disegno a matita di un gufo",
])
def test_a_prompt_that_names_its_own_look_does_not_get_the_preferred_one(prompt: str) -> None:
    """The preference is a default set once; the prompt says what this picture is."""
    assert "oil painting" not in enhance(prompt, W.IMAGE_GENERATION, Preferences(style="oil_painting"))


@pytest.mark.parametrize("prompt", [
    "a vertical phone wallpaper of a forest", "a widescreen shot of a canyon", "a panoramic city skyline",
    "a poster of a cat, 4:3", "a dog in the park in portrait mode", "a square image of a lemon",
    "a 9x16 story background", "a 1080x1920 wallpaper", "a tall phone wallpaper of a forest",
    "\u7ad6\u7248\u7684\u6d77\u62a5\uff0c\u590f\u65e5\u97f3\u4e50\u8282",  # Chinese: a vertical poster
    # Screens and feeds that have a shape of their own.
    "iphone lock screen wallpaper of a koi pond", "an instagram story of a latte", "a tiktok video of a robot",
    "desktop wallpaper of a misty forest", "a youtube thumbnail for my cooking channel", "a square logo for my cafe",
])
def test_a_prompt_that_names_its_own_shape_does_not_get_the_preferred_one(prompt: str) -> None:
    assert "16:9" not in enhance(prompt, W.IMAGE_GENERATION, Preferences(format="16:9"))


@pytest.mark.parametrize("prompt", [
    "a portrait of my dog", "a mountain landscape", "a vintage car", "a black and white cat",
    "a clock showing 10:10", "a painting of a harbor",
    # Words that also describe things say no medium or shape before a thing (a review's finds).
    "a woman with long acrylic nails", "a charcoal gray kitten", "kids watching cartoons on TV",
    "a polaroid camera on a table", "a 3D printer on a desk", "a family photo album", "a comic book store",
    "a glass of pinot noir", "a dress with vertical stripes", "a vertical garden", "a widescreen TV",
    "a poster with John 3:16",
    "a wide shot of a football stadium at night", "a gallery wall of watercolors",
])
def test_words_that_name_no_look_or_shape_take_the_preference(prompt: str) -> None:
    """Subjects and generic words ("a portrait of", "a painting") leave the preference to refine them."""
    enhanced = enhance(prompt, W.IMAGE_GENERATION, Preferences(style="oil_painting", format="16:9"))
    assert "oil painting" in enhanced and "16:9 aspect ratio" in enhanced


def test_a_look_that_goes_with_any_medium_is_kept_beside_the_prompts_own() -> None:
    """ "a photo of ..." names the medium; cinematic, vintage and minimalist still describe it."""
    for look, said in (("cinematic", "cinematic"), ("vintage", "vintage look"), ("minimalist", "minimalist style")):
        assert said in enhance("a photo of a lighthouse at dusk", W.IMAGE_GENERATION, Preferences(style=look))
    assert enhance("a cinematic shot of rain", W.IMAGE_GENERATION, Preferences(style="cinematic")).count(
        "cinematic") == 1


@pytest.mark.parametrize("prompt", [
    "a painting of a lighthouse at sunset", "a drawing of my dog", "an illustration of a dragon",
    "a cartoon dog skateboarding", "lego city street scene", "a pixar-like character of a robot",
])
def test_a_painting_or_drawing_takes_no_photorealistic_preference(prompt: str) -> None:
    """The preferred medium refines "a painting" (oil, watercolor), but a photograph contradicts it."""
    assert "photorealistic" not in enhance(prompt, W.IMAGE_GENERATION, Preferences(style="photorealistic"))


def test_a_painting_takes_the_preferred_kind_of_painting_and_a_landscape_photo_the_preferred_shape() -> None:
    assert "oil painting" in enhance("a painting of a harbor", W.IMAGE_GENERATION, Preferences(style="oil_painting"))
    for prompt in ("a landscape photo of the Swiss Alps at sunrise", "a portrait photo of a woman in a red coat"):
        assert "16:9 aspect ratio" in enhance(prompt, W.IMAGE_GENERATION, Preferences(format="16:9"))  # a subject


def test_a_style_transfer_to_a_look_of_its_own_takes_no_preference() -> None:
    prefs = Preferences(style="watercolor")
    assert "watercolor" not in enhance("make it look like a Pixar movie", W.STYLE_TRANSFER, prefs)


def test_a_style_transfer_from_this_photo_still_takes_the_preferred_look() -> None:
    """There "this photo" is the user's image, not the look asked for."""
    prefs = Preferences(style="oil_painting")
    assert "oil painting" in enhance("turn this photo into a painting", W.STYLE_TRANSFER, prefs)
    assert "oil painting" not in enhance("turn this photo into an anime drawing", W.STYLE_TRANSFER, prefs)


async def test_process_answers_with_the_preferred_style_in_the_final_prompt(client: Any) -> None:
    body = {"prompt": "a cat on a sofa", "user_preferences": {"style": "watercolor", "format": "square"}}
    result = await (await client.post("/api/v1/enhanced/process", json=body)).json()
    assert result["workflow_type"] == "image_generation"
    assert result["final_prompt"] == "a cat on a sofa, watercolor painting, high quality, detailed, professional, square format"
    assert result["metadata"]["enhancement_applied"] is True


@pytest.mark.parametrize(("prompt", "workflow", "enhanced"), [
    ("a cat, high quality", W.IMAGE_GENERATION, "a cat, high quality, detailed, professional"),
    ("smooth slow motion video of waves", W.TEXT_TO_VIDEO, "smooth slow motion video of waves, cinematic, detailed scene"),
    ("cinematic video of waves with ocean sounds", W.VIDEO_GENERATION,
     "cinematic video of waves with ocean sounds, smooth motion, synchronized audio"),
    ("animate this with smooth natural motion", W.IMAGE_TO_VIDEO, "animate this with smooth natural motion, stable subject"),
    ("professional hair styling: bob cut", W.HAIR_STYLING, "professional hair styling: bob cut, natural hairline, high detail"),
    ("sharpen it, high resolution", W.IMAGE_ENHANCEMENT, "sharpen it, high resolution, sharp details, natural colors"),
])  # fmt: skip
def test_detail_the_prompt_says_already_is_not_said_twice(prompt: str, workflow: W, enhanced: str) -> None:
    """Word by word, give or take an ending: "smooth slow motion" says "smooth motion"."""
    assert enhance(prompt, workflow, NONE) == enhanced


@pytest.mark.parametrize(("prompt", "workflow", "unsaid"), [
    ("bald", W.HAIR_STYLING, "natural hairline"),
    ("shave my head", W.HAIR_STYLING, "hair styling"),
    ("make her spin around fast", W.IMAGE_TO_VIDEO, "smooth natural motion"),
    ("make the camera shake like an earthquake", W.IMAGE_TO_VIDEO, "stable subject"),
    ("make it blurry like a dream", W.IMAGE_ENHANCEMENT, "sharp details"),
    ("make it black and white", W.IMAGE_ENHANCEMENT, "natural colors"),
    ("relight it like a sunset", W.IMAGE_EDITING, "consistent lighting"),
    ("a low-res 8-bit sprite of a knight", W.IMAGE_GENERATION, "high quality"),
    ("a simple minimalist logo of a fox", W.IMAGE_GENERATION, "detailed"),
    ("just a hint of van gogh", W.STYLE_TRANSFER, "strong artistic style"),
    ("shaky handheld video of a street", W.TEXT_TO_VIDEO, "smooth motion"),
    ("found footage of a forest", W.TEXT_TO_VIDEO, "cinematic"),
    # Taken back in words: "no", "not", "without", and other languages' own.
    ("a sunset, no details", W.TEXT_TO_VIDEO, "detailed scene"),
    ("rain video, no music", W.VIDEO_GENERATION, "audio"),
    ("waves, don\u2019t add music", W.VIDEO_GENERATION, "audio"),  # a phone's apostrophe
    ("waves crashing without any sound", W.VIDEO_GENERATION, "audio"),
    ("video of a dog barking, muted", W.VIDEO_GENERATION, "audio"),
    ("un video de olas sin m\u00fasica", W.VIDEO_GENERATION, "audio"),
    ("un chien, sans musique", W.VIDEO_GENERATION, "audio"),
    ("a dog barking, sound off", W.VIDEO_GENERATION, "audio"),
    ("she becomes a wolf", W.IMAGE_TO_VIDEO, "stable subject"),
    ("a dog, not smooth", W.TEXT_TO_VIDEO, "smooth motion"),
    ("\u0432\u0438\u0434\u0435\u043e \u0432\u043e\u043b\u043d \u0431\u0435\u0437 \u043c\u0443\u0437\u044b\u043a\u0438", W.VIDEO_GENERATION, "audio"),  # Russian: no music
])  # fmt: skip
def test_detail_the_prompt_says_against_is_left_out(prompt: str, workflow: W, unsaid: str) -> None:
    enhanced = enhance(prompt, workflow, NONE)
    assert enhanced.startswith(prompt) and unsaid not in enhanced.removeprefix(prompt)


@pytest.mark.parametrize(("prompt", "workflow", "kept"), [
    # What is taken back is the opposite, not the detail.
    ("make it sharp, not blurry", W.IMAGE_ENHANCEMENT, "sharp details"),
    ("waves, no shaky camera", W.TEXT_TO_VIDEO, "smooth motion"),
    ("a cat, not low quality", W.IMAGE_GENERATION, "high quality"),
    ("don't make it black and white", W.IMAGE_ENHANCEMENT, "natural colors"),
    # Taking back something else that shares a word, or a word that only starts alike.
    ("a bob, no hair clips", W.HAIR_STYLING, "professional hair styling"),
    ("a cat, no high heels", W.IMAGE_GENERATION, "high quality"),
    ("no tony, a music video", W.VIDEO_GENERATION, "synchronized audio"),
    ("non-stop music video", W.VIDEO_GENERATION, "synchronized audio"),  # one word, no "non"
    ("a rave with non stop music", W.VIDEO_GENERATION, "synchronized audio"),
    ("a man alone, no son", W.VIDEO_GENERATION, "synchronized audio"),
    # A word that only starts alike says nothing.
    ("a professor at a desk", W.IMAGE_GENERATION, "professional"),
    ("a cinema at night", W.TEXT_TO_VIDEO, "cinematic"),
    # Settings do not make a short description long.
    ("a red fox in the snow --ar 9:16 --v 6", W.IMAGE_GENERATION, "high quality"),
])  # fmt: skip
def test_detail_is_kept_where_the_prompt_takes_back_something_else(prompt: str, workflow: W, kept: str) -> None:
    assert kept in enhance(prompt, workflow, NONE).removeprefix(prompt)


def test_what_is_left_of_a_workflows_detail_is_still_added() -> None:
    assert enhance("rain video, no music", W.VIDEO_GENERATION, NONE) == "rain video, no music, cinematic, smooth motion"
    assert enhance("bald", W.HAIR_STYLING, NONE) == "bald, high detail"


@pytest.mark.parametrize("prompt", [
    "a mug that says hi mom", "a neon sign that says OPEN LATE", "a sign that reads:", "a cake with the words happy bday",
    "a t-shirt with text no drama", "a shirt that says don't panic", "a neon sign reading OPEN",
    "a sign that says Dr. Smith", "a cake that says happy bday!", 'a logo with the text "ACME', "a shop sign: Joe's Pizza",
])
def test_text_to_print_at_the_end_gets_nothing_appended(prompt: str) -> None:
    """Whatever followed "says hi mom" would be printed on the mug too."""
    assert enhance(prompt, W.IMAGE_GENERATION, Preferences(style="anime")) == prompt


def test_quoted_text_ends_at_its_quotes_and_lettering_is_no_text() -> None:
    assert enhance('a mug that says "hi mom"', W.IMAGE_GENERATION, NONE) == (
        'a mug that says "hi mom", high quality, detailed, professional'
    )
    for prompt in ("gold lettering on a black poster", "a spelling bee trophy", "a poem written on parchment"):
        assert enhance(prompt, W.IMAGE_GENERATION, NONE).startswith(f"{prompt}, high quality")


@pytest.mark.parametrize(("prompt", "enhanced"), [
    ("a cat --no people", "a cat, high quality, detailed, professional --no people"),
    ("a cat --ar 9:16 --style raw", "a cat, high quality, detailed, professional --ar 9:16 --style raw"),
    ("a woman, negative: blurry", "a woman, high quality, detailed, professional, negative: blurry"),
    ("a fox. Negative prompt: text", "a fox. high quality, detailed, professional. Negative prompt: text"),
    ("Photo of Sammy Davis Jr. --ar 1:1", "Photo of Sammy Davis Jr. high quality, detailed, professional --ar 1:1"),
])  # fmt: skip
def test_the_detail_goes_before_the_prompts_own_settings(prompt: str, enhanced: str) -> None:
    """Parameters and a negative prompt end the description: after them the detail would be
    a parameter's value or something to avoid."""
    assert enhance(prompt, W.IMAGE_GENERATION, NONE) == enhanced


@pytest.mark.parametrize(("prompt", "style"), [
    ("a dog, not a cartoon", "cartoon"),
    ("a cat, no photorealism", "photorealistic"),  # in another form of the word
    ("a dog, never cartoonish", "cartoon"),
    ("a cat, no cgi", "3d_render"),
    ("a cat, minimal", "minimalist"),
    ("vlog of me cooking", "cinematic"),  # what a vlog is not
    ("a woman, shot on 35mm film, Kodak Portra", "anime"),  # a photograph, said as photographers do
    ("a castle, unreal engine 5, octane render", "watercolor"),
    ("a fox, negative: anime", "anime"),  # a negative prompt takes it back too
    ("a modern minimalist kitchen", "vintage"),
    ("a busy crowded night market", "minimalist"),
    ("a flat icon of a cat", "cinematic"),
])  # fmt: skip
def test_a_preferred_style_the_prompt_takes_back_or_contradicts_is_left_out(prompt: str, style: Any) -> None:
    enhanced = enhance(prompt, W.IMAGE_GENERATION, Preferences(style=style))
    assert enhanced.count(style) == prompt.count(style)


@pytest.mark.parametrize(("prompt", "style"), [
    ("a kitchen, not modern", "vintage"),  # the look's opposite, taken back
    ("a desert with no water", "watercolor"),  # "water" is not "watercolor"
    ("a fox, not anime", "oil_painting"),  # a medium taken back is not the prompt's own
])  # fmt: skip
def test_a_preferred_style_stays_where_the_prompt_takes_back_something_else(prompt: str, style: Any) -> None:
    enhanced = enhance(prompt, W.IMAGE_GENERATION, Preferences(style=style))
    assert enhance(prompt, W.IMAGE_GENERATION, NONE) != enhanced and enhanced.startswith(f"{prompt}, ")


@pytest.mark.parametrize(("prompt", "enhanced"), [
    ("a cat \u2014ar 16:9", "a cat, high quality, detailed, professional \u2014ar 16:9"),  # "--" autocorrected
    ("a cat (negative: blurry)", "a cat, high quality, detailed, professional (negative: blurry)"),
    ("--ar 16:9", "--ar 16:9"),  # parameters alone: nothing described
    ("a photo of a negative: a film", "a photo of a negative: a film, high quality, detailed, professional"),
])  # fmt: skip
def test_settings_in_other_spellings_and_words_that_only_look_like_them(prompt: str, enhanced: str) -> None:
    assert enhance(prompt, W.IMAGE_GENERATION, NONE) == enhanced


def test_the_prompts_own_parameters_say_a_shape_and_take_back_too() -> None:
    assert "16:9" not in enhance("a cat --ar 9:16", W.IMAGE_GENERATION, Preferences(format="16:9"))
    assert enhance("a beach at dusk --no music", W.VIDEO_GENERATION, NONE) == (
        "a beach at dusk, cinematic, smooth motion --no music"
    )


def test_a_style_transfer_to_a_named_look_takes_no_preferred_style() -> None:
    """The prompt is the look ("van gogh", "a comic book"); the preference refines only a generic one."""
    prefs = Preferences(style="anime")
    for prompt in ("van gogh", "turn it into a comic book", "make it baroque"):
        assert "anime" not in enhance(prompt, W.STYLE_TRANSFER, prefs)
    assert "anime style" in enhance("make it artistic", W.STYLE_TRANSFER, prefs)


@pytest.mark.parametrize("prompt", ["a cat, vertical", "a cat, 9 by 16", "an ultrawide shot of a desert"])
def test_an_orientation_said_on_its_own_takes_no_preferred_shape(prompt: str) -> None:
    assert "aspect ratio" not in enhance(prompt, W.IMAGE_GENERATION, Preferences(format="4:3"))
