"""The outside world for tests: aioresponses, made to work with aiohttp 3.14.

aiohttp 3.14 added a required `stream_writer` argument to ClientResponse, which aioresponses
0.7.9 does not pass (pnuckowski/aioresponses#289, fix pending in #288). Until a release has
it, `mock_upstream` builds its responses from a subclass that supplies an inert writer.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aioresponses.core as aioresponses_core
from aiohttp import ClientResponse
from aioresponses import aioresponses

_NEEDS_WRITER = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


class _SentWriter:
    """A request that was already sent: aiohttp only reads how much it wrote."""

    output_size = 0


class _CompatResponse(ClientResponse):
    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(method, url, **kwargs)


@contextmanager
def mock_upstream(*, passthrough: tuple[str, ...] = ("http://127.0.0.1",)) -> Iterator[aioresponses]:
    """Mock every outgoing aiohttp request except to `passthrough` prefixes (the test server)."""
    original = aioresponses_core.ClientResponse  # type: ignore[attr-defined]
    if _NEEDS_WRITER:
        aioresponses_core.ClientResponse = _CompatResponse  # type: ignore[attr-defined]
    try:
        with aioresponses(passthrough=list(passthrough)) as mocked:
            yield mocked
    finally:
        aioresponses_core.ClientResponse = original  # type: ignore[attr-defined]
