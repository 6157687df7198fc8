"""What aiohttp's HTTP parser refuses, before any middleware, still gets the gateway's JSON error."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from tests.conftest import MakeClient, exchange, raw_request

MALFORMED = {
    "garbled request line": b"NOT HTTP AT ALL\r\n\r\n",
    "bad content-length": (
        b"POST /api/v1/enhanced/process HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n"
    ),
    "header too long": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "header without a colon": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_request_the_parser_refuses_gets_a_json_400_and_a_closed_connection(
    make_client: MakeClient, raw: bytes
) -> None:
    client = await make_client()
    status, headers, body = await exchange(client, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["error"] == "malformed_request"
    assert error["detail"]  # aiohttp's own words on what it refused


async def test_a_refusal_before_the_app_carries_a_trace_id_that_its_log_line_holds(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """No span exists for a request the parser refused, but the client still gets an id to quote,
    and an SRE finds the refusal's log line by it."""
    client = await make_client()
    with caplog.at_level(logging.INFO, logger="gateway.server"):
        _, first, _ = await exchange(client, MALFORMED["garbled request line"])
        _, second, _ = await exchange(client, MALFORMED["garbled request line"])
    assert re.fullmatch(r"[0-9a-f]{32}", first["x-trace-id"]) and first["x-trace-id"] != second["x-trace-id"]
    (line,) = [r for r in caplog.records if getattr(r, "trace_id", None) == first["x-trace-id"]]
    assert line.getMessage().startswith("refused a malformed request") and line.status == 400  # type: ignore[attr-defined]


async def _refused(client: Any, caplog: pytest.LogCaptureFixture, raw: bytes) -> tuple[str, bytes]:
    """A request the parser refuses (400): what the server logged of it, and the answer's body."""
    with caplog.at_level(logging.INFO, logger="gateway.server"):
        status, _, body = await exchange(client, raw)
    assert status == 400
    return " ".join(record.getMessage() for record in caplog.records), body


@pytest.mark.parametrize("name", [b"access_token", b"access%5Ftoken", b"%61ccess_token", b"ACCESS_TOKEN",
                                  b"prompt=a b&access_token", b"prompt=it's&access_token"])
async def test_an_eventsource_jwt_in_a_refused_request_line_is_not_logged_or_echoed(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, name: bytes
) -> None:
    """aiohttp quotes the request line it refuses; a GET stream's ?access_token= is in it, under
    any spelling aiohttp would decode to that name: the whole query string is left out."""
    raw = b"GET /api/v1/enhanced/stream?prompt=x&" + name + b"=eyJ.secret.sig HTTP/1.x\r\nHost: 127.0.0.1\r\n\r\n"
    logged, body = await _refused(await make_client(), caplog, raw)
    assert "/api/v1/enhanced/stream?[redacted]" in logged and b"stream?[redacted]" in body
    assert "eyJ.secret.sig" not in logged and b"eyJ.secret.sig" not in body


@pytest.mark.parametrize("raw", [
    b"GET /api/v1/enhanced/stream?prompt=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    MALFORMED["header too long"],
])  # fmt: skip
async def test_a_line_too_long_is_said_in_words_not_python(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    """A 70 KB GET URL was answered "Got more than 65536 bytes when reading: bytearray(b'/api/...":
    Python's spelling of the line, to a frontend."""
    _, body = await _refused(await make_client(), caplog, raw)
    detail = json.loads(body)["detail"]
    assert re.fullmatch(r"a request line or header is longer than \d+ bytes", detail), detail


@pytest.mark.parametrize("spacing", [b" ", b"  ", b"\t"])
async def test_a_bearer_token_in_a_refused_header_line_is_not_logged_or_echoed(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, spacing: bytes
) -> None:
    """aiohttp quotes a header line it refuses (a control character in its value)."""
    raw = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer" + spacing + b"igw_secret\x01\r\n\r\n"
    logged, body = await _refused(await make_client(), caplog, raw)
    assert "igw_secret" not in logged and b"igw_secret" not in body


async def test_refusals_before_the_app_are_counted_under_route_unparsed(make_client: MakeClient) -> None:
    """A flood of garbage shows on the dashboards, not only in the logs."""
    client = await make_client()
    await exchange(client, MALFORMED["garbled request line"])
    await exchange(client, b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: bogus\r\nConnection: close\r\n\r\n")
    metrics = await (await client.get("/metrics")).text()
    assert ('http_server_request_duration_seconds_count{http_request_method="_OTHER",'
            'http_route="unparsed",http_response_status_code="400"} 1') in metrics
    assert 'http_route="unparsed",http_response_status_code="417"} 1' in metrics
    stats = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert stats["requests_by_route"]["unparsed"] == 2


async def test_a_well_formed_request_on_the_same_server_is_answered_as_usual(make_client: MakeClient) -> None:
    client = await make_client()
    status, _, body = await exchange(client, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("path", ["/api/v1/enhanced/process", "/no/such/route"])
async def test_an_expectation_the_server_cannot_meet_is_a_json_417(make_client: MakeClient, path: str) -> None:
    """aiohttp answers an Expect other than 100-continue before any middleware runs."""
    client = await make_client()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nExpect: bogus".encode()
    status, content_type, error = await raw_request(client, head, b'{"prompt": "a cat"}')
    assert (status, content_type, error["error"]) == (417, "application/json", "expectation_failed")


async def test_an_unmet_expectation_carries_a_trace_id_that_its_log_line_holds(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    raw = b"POST /api/v1/enhanced/process HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: bogus\r\nConnection: close\r\n\r\n"
    with caplog.at_level(logging.INFO, logger="gateway.server"):
        status, headers, _ = await exchange(client, raw)
    assert status == 417 and re.fullmatch(r"[0-9a-f]{32}", headers["x-trace-id"])
    (line,) = [r for r in caplog.records if getattr(r, "trace_id", None) == headers["x-trace-id"]]
    assert line.status == 417  # type: ignore[attr-defined]
