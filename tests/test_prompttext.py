"""Prompts: invisible characters are refused or stripped by class."""

from __future__ import annotations

from typing import Any

import pytest

PROCESS = "/api/v1/enhanced/process"


@pytest.mark.parametrize(
    "prompt",
    [
        "hello\x1b[31mworld",  # ANSI escape
        "a\x85cat",  # C1 control (NEL) inside the text
        "make it \u202eredlob\u202c",  # right-to-left override
        "a cat \u2066hidden\u2069",  # bidi isolate
        "a cat\U000e0069\U000e0067\U000e006e\U000e006f\U000e0072\U000e0065",  # tag chars: "ignore"
    ],
)
async def test_dangerous_invisibles_are_refused(client: Any, prompt: str) -> None:
    """Control, bidi override and tag characters get a 422 naming the prompt."""
    resp = await client.post(PROCESS, json={"prompt": prompt})
    assert resp.status == 422
    assert (await resp.json())["field"] == "prompt"


async def test_zero_width_characters_are_stripped(client: Any) -> None:
    """Zero-width space, word joiner, BOM and soft hyphen vanish; the prompt is classified as typed."""
    resp = await client.post(PROCESS, json={"prompt": "\ufeffchange my ha\u200bir to blon\u00adde\u2060"})
    assert resp.status == 200
    result = await resp.json()
    assert result["workflow_type"] == "hair_styling"
    assert "\u200b" not in result["final_prompt"] and "\ufeff" not in result["final_prompt"]


async def test_emoji_joiners_and_flags_are_kept(client: Any) -> None:
    """ZWJ emoji sequences and subdivision flags (which use tag characters) are fine."""
    scotland = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467"
    resp = await client.post(PROCESS, json={"prompt": f"a poster with {family} and {scotland}"})
    assert resp.status == 200
    assert family in (await resp.json())["final_prompt"]


async def test_only_invisibles_is_empty(client: Any) -> None:
    """A prompt of nothing but zero-width characters is empty."""
    resp = await client.post(PROCESS, json={"prompt": "\u200b\u200b \ufeff"})
    assert resp.status == 422


@pytest.mark.parametrize(
    "prompt",
    ["\u200d", "\u200c\u200e", "\u061c", "\u0301", "\ufe0f", "\u3164 \u3164", "\u2800", "\u200d\u3000\u0301"],
)
async def test_a_prompt_with_nothing_visible_is_empty(client: Any, prompt: str) -> None:
    """Joiners, marks, a combining accent alone, Hangul fillers, a blank braille cell: no request."""
    resp = await client.post(PROCESS, json={"prompt": prompt})
    assert resp.status == 422
    assert (await resp.json())["field"] == "prompt"


async def test_a_visible_character_among_invisibles_is_a_prompt(client: Any) -> None:
    """One emoji, an accented letter or a CJK character is something to classify."""
    for prompt in ("\u200d\U0001f408", "e\u0301", "\u732b"):
        assert (await client.post(PROCESS, json={"prompt": prompt})).status == 200


async def test_a_decomposed_prompt_is_composed_and_shares_the_composed_ones_cache_entry(client: Any) -> None:
    """ "cafe\u0301" is "caf\u00e9" as the user sees it: one cache entry, one character each."""
    first = await (await client.post(PROCESS, json={"prompt": "a caf\u00e9 at night in the rain"})).json()
    second = await (await client.post(PROCESS, json={"prompt": "a cafe\u0301 at night in the rain"})).json()
    assert second["final_prompt"] == first["final_prompt"] and "caf\u00e9" in second["final_prompt"]
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    accents = await client.post(PROCESS, json={"prompt": "e\u0301" * 1000 + "s"})  # 2,001 code points
    assert accents.status == 200
