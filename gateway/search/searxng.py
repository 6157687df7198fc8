"""A self-hosted SearXNG instance's JSON API: open source, no key (the default provider).

The instance must allow the json format (`search.formats: [html, json]` in settings.yml).
"""

from __future__ import annotations

import aiohttp
import msgspec

from gateway.search.transport import get_json
from pipeline.search.protocol import ImageHit


class _Result(msgspec.Struct):
    img_src: str | None = None
    title: str | None = None
    url: str | None = None  # the page the image is on


class _Answer(msgspec.Struct):
    results: list[_Result] = []


class SearxngSearch:
    name = "searxng"

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.endpoint = base_url.rstrip("/") + "/search"

    async def search(self, query: str, *, limit: int) -> list[ImageHit]:
        answer = await get_json(
            self.session,
            self.endpoint,
            params={"q": query, "format": "json", "categories": "images", "safesearch": "1"},
            into=_Answer,
            provider=self.name,
        )
        hits = [
            ImageHit(image_url=_absolute(r.img_src), title=r.title or None, source_url=r.url)
            for r in answer.results
            if r.img_src
        ]
        return hits[:limit]


def _absolute(src: str) -> str:
    # Some engines hand back protocol-relative image URLs ("//upload.wikimedia.org/...").
    return "https:" + src if src.startswith("//") else src
