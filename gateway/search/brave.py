"""Brave Image Search API: the commercial option (key in BRAVE_SEARCH_API_KEY)."""

from __future__ import annotations

import aiohttp
import msgspec

from gateway.search.transport import get_json
from pipeline.search.protocol import ImageHit

ENDPOINT = "https://api.search.brave.com/res/v1/images/search"


class _Properties(msgspec.Struct):
    url: str | None = None  # the full-size image on the publisher's site


class _Result(msgspec.Struct):
    title: str | None = None
    url: str | None = None  # the page the image is on
    properties: _Properties | None = None


class _Answer(msgspec.Struct):
    results: list[_Result] = []


class BraveImageSearch:
    name = "brave"

    def __init__(self, session: aiohttp.ClientSession, api_key: str) -> None:
        self.session = session
        self.api_key = api_key

    async def search(self, query: str, *, limit: int) -> list[ImageHit]:
        answer = await get_json(
            self.session,
            ENDPOINT,
            params={"q": query, "count": str(min(100, limit)), "safesearch": "strict"},
            headers={"Accept": "application/json", "X-Subscription-Token": self.api_key},
            into=_Answer,
            provider=self.name,
        )
        return [
            ImageHit(image_url=r.properties.url, title=r.title or None, source_url=r.url)
            for r in answer.results
            if r.properties is not None and r.properties.url
        ][:limit]
