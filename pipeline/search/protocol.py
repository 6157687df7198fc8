"""What every image search provider offers, and the one error it raises."""

from __future__ import annotations

from typing import Protocol

import msgspec


class ImageHit(msgspec.Struct, frozen=True, kw_only=True):
    """One image result as a provider returns it, before any safety check."""

    image_url: str
    title: str | None = None
    source_url: str | None = None


class SearchFailed(Exception):
    """The provider did not answer usefully: timeout, connection error, non-200, bad body."""


class ImageSearch(Protocol):
    name: str  # "searxng" | "brave": part of cache keys and of the stream's event

    async def search(self, query: str, *, limit: int) -> list[ImageHit]:
        """Best results first. Raises SearchFailed (never aiohttp's own errors)."""
        ...
