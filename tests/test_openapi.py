"""/openapi.json describes every route; schemathesis finds no 5xx and no schema violations."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import gateway.openapi
from tests.pg import SERVER as PG_SERVER
from tests.pg import fresh_database

ROOT = Path(__file__).resolve().parent.parent
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12  # bounded: the whole run stays a few seconds


async def test_document_lists_every_route(client: Any) -> None:
    """Each route on the router (HEAD aside) is in the document, with its responses."""
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.0")
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        operation = doc["paths"][route.resource.canonical][route.method.lower()]
        assert operation["responses"]
    process = doc["paths"]["/api/v1/enhanced/process"]["post"]
    assert process["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ProcessBody")
    success = process["responses"]["200"]["content"]["application/json"]["schema"]
    assert success["$ref"].endswith("/ProcessResult")
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "403" in doc["paths"]["/metrics"]["get"]["responses"]
    # Cross-site browser requests are refused before routing: every operation can answer 403.
    assert "403" in process["responses"] and "417" in process["responses"]


async def test_the_stream_events_data_schemas_are_components(client: Any) -> None:
    """A frontend generates types for every event it reads, the live stage events included."""
    doc = await (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for name in ("ContextEvent", "IntentEvent", "ModelEvent", "PromptEvent", "ErrorEvent", "ProcessResult"):
        # Every event carries these (the runner stamps them): generated types must not make them optional.
        assert {"elapsed_ms", "trace_id"} <= set(schemas[name]["required"]), name
    assert {"low_confidence", "no_clear_intent"} <= set(schemas["IntentEvent"]["properties"])


async def test_the_eventsource_stream_documents_its_token_and_its_204(client: Any) -> None:
    get = (await (await client.get("/openapi.json")).json())["paths"]["/api/v1/enhanced/stream"]["get"]
    assert "access_token" in {p["name"] for p in get["parameters"]}
    assert "204" in get["responses"] and "content" not in get["responses"]["204"]
    # Style and format are read as the POST body's are ("Oil painting", "16x9"), not enums only.
    schemas = {p["name"]: p["schema"] for p in get["parameters"]}
    assert schemas["style"]["type"] == "string" and "enum" not in schemas["style"]
    assert "1920x1080" in schemas["format"]["description"]


async def test_document_is_public_with_auth_on(make_client: Any) -> None:
    """The document itself needs no key, and it declares the bearer scheme."""
    client = await make_client(gateway_api_keys="a:0123456789abcdef0123")
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert (await resp.json())["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A throwaway Postgres database, so the analytics and reference endpoints run for real."""
    loop = asyncio.new_event_loop()
    context = fresh_database()
    try:
        yield f"{PG_SERVER}/{loop.run_until_complete(context.__aenter__())}"
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(scope="module")
def server(database: str) -> Iterator[str]:
    """The real gateway in a subprocess (open on loopback, limits out of the way)."""
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DATABASE_", "REDIS_"))},
        "DATABASE_URL": database,
        "INTENT_CLASSIFIER": "rules",
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "1000000",
        "RATE_LIMIT_REQUESTS_PER_HOUR": "1000000",
        "COST_LIMIT_PER_HOUR": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_schemathesis_finds_no_server_error_or_schema_violation(server: str) -> None:
    """Generated requests to every operation: no 5xx, statuses, content types and bodies as documented."""
    with urllib.request.urlopen(f"{server}/openapi.json", timeout=5) as resp:
        schema = schemathesis.openapi.from_dict(json.loads(resp.read()))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    tested = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(base_url=server, timeout=10)
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except Exception as exc:
            exc.add_note(f"operation: {operation.label}")
            raise
        tested += 1
    assert tested == len(operations)


async def test_the_document_is_built_once_not_per_request(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~5 ms of the event loop per build: a flood of this public path used to starve Redis
    replies past their timeout, and the rate limits failed open for everyone."""
    builds: list[object] = []
    build = gateway.openapi.build_document

    def counted(app: Any) -> dict[str, Any]:
        builds.append(app)
        return build(app)

    monkeypatch.setattr(gateway.openapi, "build_document", counted)
    client = await make_client()
    bodies = [await (await client.get("/openapi.json")).read() for _ in range(3)]
    assert len(builds) == 1 and bodies[0] == bodies[1] == bodies[2]
