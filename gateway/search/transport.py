"""One GET to a search provider, its failures wrapped where they enter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import aiohttp
import msgspec

from pipeline.search.protocol import SearchFailed

T = TypeVar("T")

MAX_RESPONSE_BYTES = 2 * 1024 * 1024  # a results page is tens of KiB; refuse to buffer more


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    params: Mapping[str, str],
    into: type[T],
    provider: str,
    headers: Mapping[str, str] | None = None,
) -> T:
    """GET `url` and decode its JSON body into `into`; any failure is SearchFailed."""
    try:
        async with session.get(
            url, params=params, headers=headers, allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise SearchFailed(f"{provider} answered HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
                raise SearchFailed(f"{provider} answer is too large")
            body = await _read_capped(resp.content, MAX_RESPONSE_BYTES + 1)
    except TimeoutError as exc:  # aiohttp's timeouts (the session's ClientTimeout) subclass it
        raise SearchFailed(f"{provider} timed out") from exc
    except aiohttp.ClientError as exc:
        raise SearchFailed(f"{provider} unreachable: {exc.__class__.__name__}") from exc
    if len(body) > MAX_RESPONSE_BYTES:
        raise SearchFailed(f"{provider} answer is too large")
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise SearchFailed(f"{provider} sent an unexpected body: {exc}") from exc


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to its end or `limit` bytes, whichever comes first.

    One read(n) returns only what has arrived so far, so an answer sent in two writes would be cut.
    """
    body = bytearray()
    while len(body) < limit and (chunk := await stream.read(limit - len(body))):
        body += chunk
    return bytes(body)
