"""Users' @tags: saved with POST /api/v1/references, resolved by the prompt stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pipeline.references
from gateway.appkeys import REFERENCES
from tests.conftest import MakeClient

REFS = "/api/v1/references"
PROCESS = "/api/v1/enhanced/process"
SARAH = "https://demo.supabase.co/storage/v1/object/public/images/sarah.jpg"


async def _save_and_use(client: Any) -> dict[str, Any]:
    resp = await client.post(REFS, json={"tag": "@Sarah", "image_url": SARAH}, headers={"X-User-Id": "u1"})
    assert resp.status == 201
    assert await resp.json() == {"tag": "sarah", "image_url": SARAH}
    prompt = {"prompt": "put @sarah in this red dress"}
    resp = await client.post(PROCESS, json=prompt, headers={"X-User-Id": "u1"})
    result: dict[str, Any] = await resp.json()
    return result


async def test_saved_tag_is_resolved_in_memory(client: Any) -> None:
    """Without a database the endpoints work on the in-process store."""
    result = await _save_and_use(client)
    refs = [(r["kind"], r["tag"], r["image_url"]) for r in result["references"]]
    assert refs == [("user_tag", "sarah", SARAH)]
    assert result["metadata"]["unknown_tags"] == []
    assert result["metadata"]["image_missing"] is False  # @sarah's image is the one to work on
    listed = await (await client.get(REFS, headers={"X-User-Id": "u1"})).json()
    assert listed == {"references": [{"tag": "sarah", "image_url": SARAH}]}
    other = await (await client.get(REFS, headers={"X-User-Id": "u2"})).json()
    assert other == {"references": []}


@pytest.mark.parametrize(("saved", "prompt"), [
    ("María", "put @maría in this red dress"),  # was read as the unknown tag "mar"
    ("zoë", "put @Zoë in this red dress"),
    ("ma\u0301ria", "put @mária in this red dress"),  # saved decomposed, mentioned composed
    ("नमस्ते", "put @नमस्ते in this red dress"),  # vowel signs are marks, not letters
    ("東京", "put @東京 in this red dress"),
])  # fmt: skip
async def test_tags_in_any_script_are_saved_and_resolved_whole(client: Any, saved: str, prompt: str) -> None:
    me = {"X-User-Id": "u1"}
    assert (await client.post(REFS, json={"tag": saved, "image_url": SARAH}, headers=me)).status == 201
    result = await (await client.post(PROCESS, json={"prompt": prompt}, headers=me)).json()
    assert [r["image_url"] for r in result["references"]] == [SARAH]
    assert result["metadata"]["unknown_tags"] == []


def test_mentions_are_whole_tags_or_none() -> None:
    find = pipeline.references.find_mentions
    assert find("@sarah, then @Bob. (@anna) and @sarah again") == ("sarah", "bob", "anna")
    assert find("write to me@example.com or @@twice or @_x") == ()  # e-mail, not tags
    assert find("@" + "a" * 65 + " and @ok") == ("ok",)  # cut to 64 it would name another tag
    assert find("@" + "a" * 64 + ".. or") == ("a" * 64,)  # the sentence's dots are not the tag's
    assert find("put @sarah\ufe0f in red") == ("sarah",)  # an invisible mark is no part of a tag
    assert find("put @sarah\u3164 in red") == ("sarah",)  # nor an invisible letter (a Hangul filler)
    assert find("@" + "a" * 62 + "....b") == ()  # too long, though its first 62 letters and the dots look whole
    assert find("@" + "a" * 64 + "... or") == ("a" * 64,)  # the longest tag, then an ellipsis
    assert find("put @sarah" + "." * 70 + " x") == ("sarah",)
    assert find("put @sa\u3164rah in red") == ()  # cut at the invisible letter it would be @sa


def test_a_latin_tag_ends_where_japanese_or_chinese_text_begins() -> None:
    """Japanese and Chinese put no space after a name, nor Korean before a particle: "@sarahの写真"
    was the unknown tag "sarahの写真"."""
    find = pipeline.references.find_mentions
    assert find("@sarahの写真を使って") == ("sarah",)
    assert find("把@Anna2穿上红色的裙子") == ("anna2",)
    assert find("@東京の写真") == ("東京の写真",)  # a tag begun in such a script runs on, as documented
    # A QA pass's finds: the full-width @ those keyboards type, and Korean particles.
    assert find("\uff20sarahの写真を使って") == ("sarah",)
    assert find("把\uff20Anna穿上红裙子") == ("anna",)
    assert find("@sarah\uc758 \uc0ac\uc9c4\uc73c\ub85c") == ("sarah",)


def test_a_tag_with_a_mark_no_reader_sees_cannot_be_saved() -> None:
    """It would be a second @sarah that looks the same as the first."""
    assert pipeline.references.is_tag("sarah") and not pipeline.references.is_tag("sarah\ufe0f")
    assert not pipeline.references.is_tag("sarah\u3164") and not pipeline.references.is_tag("\u3164sarah")


async def test_an_unknown_tag_brings_no_image(client: Any) -> None:
    result = await (await client.post(PROCESS, json={"prompt": "put @nobody in this red dress"})).json()
    assert result["metadata"]["unknown_tags"] == ["nobody"]
    assert (result["workflow_type"], result["metadata"]["image_missing"]) == ("reference_styling", True)


async def test_saved_tag_lives_in_postgres(postgres_db: str, make_client: MakeClient, tmp_path: Path) -> None:
    """With DATABASE_URL tags are stored in user_references and outlive the gateway."""
    settings = {"database_url": postgres_db, "analytics_spill_path": str(tmp_path / "spill.jsonl")}
    first = await make_client(**settings)
    result = await _save_and_use(first)
    assert result["references"][0]["image_url"] == SARAH
    await first.close()
    second = await make_client(**settings)
    again = await (
        await second.post(PROCESS, json={"prompt": "@sarah at the beach"}, headers={"X-User-Id": "u1"})
    ).json()
    assert [(r["tag"], r["image_url"]) for r in again["references"]] == [("sarah", SARAH)]
    replaced = "https://demo.supabase.co/storage/v1/object/public/images/sarah2.jpg"
    await second.post(REFS, json={"tag": "sarah", "image_url": replaced}, headers={"X-User-Id": "u1"})
    listed = await (await second.get(REFS, headers={"X-User-Id": "u1"})).json()
    assert listed == {"references": [{"tag": "sarah", "image_url": replaced}]}


@pytest.mark.parametrize("store", ["memory", "postgres"])
async def test_a_user_keeps_at_most_max_tags_and_may_still_replace_them(
    postgres_db: str, make_client: MakeClient, tmp_path: Path, store: str
) -> None:
    """One user's saves used to grow memory without bound (and a 118 MB list stalled everyone):
    past the cap a new tag is a 422 naming the field; replacing one still works; others are
    not affected."""
    settings: dict[str, object] = {"max_tags_per_user": 3}
    if store == "postgres":
        settings |= {"database_url": postgres_db, "analytics_spill_path": str(tmp_path / "s.jsonl")}
    client = await make_client(**settings)
    me = {"X-User-Id": "collector"}
    for i in range(3):
        assert (await client.post(REFS, json={"tag": f"t{i}", "image_url": SARAH}, headers=me)).status == 201
    refused = await client.post(REFS, json={"tag": "t3", "image_url": SARAH}, headers=me)
    assert (refused.status, (await refused.json())["field"]) == (422, "tag")
    assert (await client.post(REFS, json={"tag": "t0", "image_url": SARAH + "?v=2"}, headers=me)).status == 201
    listed = await (await client.get(REFS, headers=me)).json()
    assert [r["tag"] for r in listed["references"]] == ["t0", "t1", "t2"]
    other = await client.post(REFS, json={"tag": "t3", "image_url": SARAH}, headers={"X-User-Id": "someone"})
    assert other.status == 201


@pytest.mark.parametrize("store", ["memory", "postgres"])
async def test_a_deleted_tag_is_no_longer_resolved_and_frees_its_place(
    postgres_db: str, make_client: MakeClient, tmp_path: Path, store: str
) -> None:
    """A user who saved the wrong picture as @sarah can take it back: prompts stop resolving it,
    deleting it again says it was not there, and another user's @sarah is untouched."""
    settings: dict[str, object] = {"max_tags_per_user": 1}
    if store == "postgres":
        settings |= {"database_url": postgres_db, "analytics_spill_path": str(tmp_path / "s.jsonl")}
    client = await make_client(**settings)
    me, other = {"X-User-Id": "u1"}, {"X-User-Id": "u2"}
    for who in (me, other):
        assert (await client.post(REFS, json={"tag": "sarah", "image_url": SARAH}, headers=who)).status == 201
    deleted = await client.delete(f"{REFS}/@Sarah", headers=me)
    assert (deleted.status, await deleted.json()) == (200, {"tag": "sarah", "deleted": True})
    again = await client.delete(f"{REFS}/sarah", headers=me)
    assert (again.status, await again.json()) == (200, {"tag": "sarah", "deleted": False})
    result = await (await client.post(PROCESS, json={"prompt": "put @sarah in this red dress"}, headers=me)).json()
    assert result["references"] == [] and result["metadata"]["unknown_tags"] == ["sarah"]
    assert (await (await client.get(REFS, headers=me)).json()) == {"references": []}
    assert len((await (await client.get(REFS, headers=other)).json())["references"]) == 1
    # The one place it held (the cap is 1 here) is free for a new tag.
    assert (await client.post(REFS, json={"tag": "anna", "image_url": SARAH}, headers=me)).status == 201


async def test_deleting_a_tag_no_prompt_could_mention_is_a_422(client: Any) -> None:
    refused = await client.delete(f"{REFS}/sa%20rah")
    assert (refused.status, (await refused.json())["field"]) == (422, "tag")


async def test_the_memory_store_is_bounded_in_all_whoever_callers_say_they_are(make_client: MakeClient) -> None:
    """Open mode: callers name themselves (X-User-Id), so a new name per save would pass the
    per-user bound; the memory store also bounds its total."""
    client = await make_client(max_tags_in_memory=4)
    for i in range(4):
        saved = await client.post(REFS, json={"tag": "t", "image_url": SARAH}, headers={"X-User-Id": f"u{i}"})
        assert saved.status == 201
    refused = await client.post(REFS, json={"tag": "t", "image_url": SARAH}, headers={"X-User-Id": "u4"})
    assert refused.status == 422
    assert (await client.post(REFS, json={"tag": "t", "image_url": SARAH + "?v=2"},
                              headers={"X-User-Id": "u0"})).status == 201  # replacing still works
    assert (await (await client.delete(f"{REFS}/t", headers={"X-User-Id": "u0"})).json())["deleted"]
    saved = await client.post(REFS, json={"tag": "t", "image_url": SARAH}, headers={"X-User-Id": "u4"})
    assert saved.status == 201  # a deleted tag's place in the total is free again


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tag": "sarah", "image_url": "ftp://x/y.jpg"}, "image_url"),
        ({"tag": "sarah", "image_url": "https:///nohost"}, "image_url"),
        ({"tag": "sa rah", "image_url": SARAH}, "tag"),
        ({"tag": "", "image_url": SARAH}, "tag"),
        ({"tag": "x" * 65, "image_url": SARAH}, "tag"),
        ({"tag": "sarah"}, "image_url"),  # missing: named as a wrong one is
        ({"image_url": SARAH}, "tag"),
        ({"tag": "sarah", "image_url": SARAH, "imge_url": SARAH}, "imge_url"),  # a typo: named, not ignored
    ],
)
async def test_invalid_reference_is_refused(client: Any, body: dict[str, str], field: str) -> None:
    """Only tags a prompt can mention, and http(s) image URLs, are saved."""
    resp = await client.post(REFS, json=body)
    assert resp.status == 422
    assert (await resp.json())["field"] == field


@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"}, {"Content-Encoding": "br"}, {"Content-Encoding": "foo"}])
async def test_a_reference_body_the_gateway_cannot_read_is_415_and_nothing_is_saved(
    client: Any, headers: dict[str, str]
) -> None:
    body = b'{"tag": "sarah", "image_url": "%s"}' % SARAH.encode()
    resp = await client.post(REFS, data=body, headers={"Content-Type": "application/json", "X-User-Id": "u1", **headers})
    assert resp.status == 415
    listed = await (await client.get(REFS, headers={"X-User-Id": "u1"})).json()
    assert listed == {"references": []}


async def test_when_the_lookup_fails_its_tags_are_reported_unknown_not_found(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The @tag lookup fails (its database gone): the prompt stage falls back, and its answer
    lists the tags it could not resolve instead of an empty list that reads as 'all found'."""

    async def broken(user_id: str, tags: Any) -> dict[str, str]:
        raise ConnectionError("the reference store is gone")

    monkeypatch.setattr(client.app[REFERENCES], "resolve", broken)
    result = await (await client.post(PROCESS, json={"prompt": "put @sarah and @mike in red dresses"})).json()
    assert result["fallback_used"] is True and result["references"] == []
    assert result["metadata"]["unknown_tags"] == ["sarah", "mike"]
