"""Shared fixtures: the real app factory behind a real test server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from aioresponses import aioresponses

from gateway.app import create_app
from gateway.config import Settings
from gateway.server import SERVER_OPTIONS, GatewayRunner
from pipeline.protocols import Classifier
from tests.pg import SERVER as PG_SERVER
from tests.pg import fresh_database
from tests.upstream import mock_upstream

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


class GatewayTestServer(TestServer):
    """aiohttp's TestServer on the runner `serve` uses (JSON for what the HTTP parser refuses)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    """Start the gateway with `Settings` overrides and, optionally, an injected classifier."""

    async def make(classifier: Classifier | None = None, **overrides: Any) -> TestClient[Any, Any]:
        # The API tests pin the rules (deterministic keyword answers, no model load per app);
        # tests/test_local_classifier.py covers the embedded default through the app.
        overrides.setdefault("intent_classifier", "rules")
        settings = msgspec.structs.replace(Settings.from_env({}), **overrides)
        app = create_app(settings, classifier=classifier)
        # As in production. (aiohttp's TestServer drops constructor options and always
        # cancels the handlers of clients that disconnect; the rest go to start_server.)
        server = GatewayTestServer(app)
        await server.start_server(**{k: v for k, v in SERVER_OPTIONS.items() if k != "handler_cancellation"})
        return await aiohttp_client(server)

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client()


class GatedClassifier:
    """A classifier that waits for the test to open its gate: in-flight work on demand."""

    name = "gated"
    version = "gated-1"

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def quick_answer(self, query: Any) -> None:
        return None  # answers only by awaiting

    async def classify(self, query: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.classify(query)


class FailingClassifier:
    """A classifier with a bug: every call raises."""

    name = "failing"
    version = "failing-1"

    async def quick_answer(self, query: Any) -> None:
        return None  # answers only by awaiting

    async def classify(self, query: Any) -> Any:
        raise RuntimeError("classifier exploded")


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def exchange(client: TestClient, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection and read to EOF (times out unless the server closes);
    returns the status, the headers (names in lower case) and the body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def raw_request(client: TestClient, head: bytes, body: bytes = b"") -> tuple[int, str, Any]:
    """Send bytes no HTTP client library would (bytes that are not UTF-8 in a header or a body);
    returns the status, the Content-Type and the body (parsed when it is JSON)."""
    length = f"Content-Length: {len(body)}\r\n".encode() if body else b""
    status, headers, payload = await exchange(
        client, head.rstrip(b"\r\n") + b"\r\nConnection: close\r\n" + length + b"\r\n" + body
    )
    content_type = headers.get("content-type", "").split(";")[0]
    return status, content_type, msgspec.json.decode(payload) if content_type == "application/json" else payload


@pytest.fixture
def upstream() -> Iterator[aioresponses]:
    """The outside world (LLM, search providers): mocked; the test server itself passes through."""
    with mock_upstream() as mocked:
        yield mocked


@pytest.fixture
async def postgres_db() -> AsyncIterator[str]:
    """A fresh database on the machine's PostgreSQL for this test; yields its URL.

    List it before `make_client` in a test's arguments, so the gateway stops (and flushes its
    log) before the database is dropped.
    """
    async with fresh_database() as name:
        yield f"{PG_SERVER}/{name}"
