"""Bad input never reaches a stage: clear 4xx JSON errors."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import msgspec
import pytest

from tests.conftest import MakeClient, exchange, raw_request
from tests.sse import parse_events

PROCESS = "/api/v1/enhanced/process"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n\t "}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "hello\x00world"}, "prompt"),
        ({}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "a cat", "user_preferences": {"quality": "ultra"}}, "user_preferences.quality"),
        ({"prompt": "a cat", "user_preferences": {"style": "x" * 60}}, "user_preferences.style"),
        ({"prompt": "a cat", "working_image_url": "ftp://a.supabase.co/x.jpg"}, "working_image_url"),
        ({"prompt": "a cat", "working_image_url": "javascript:alert(1)"}, "working_image_url"),
        ({"prompt": "a cat", "working_image_url": "https://"}, "working_image_url"),
        ({"prompt": "a cat", "use_ai_classification": "yes"}, "use_ai_classification"),
        ({"prompt": "a cat", "uploaded_image_urls": ["", "https://demo.supabase.co/a.jpg", "ftp://x/y.jpg"]},
         "uploaded_image_urls[2]"),  # the index as sent, blanks counted
        ({"prompt": "a cat", "uploaded_image_urls": ["https://demo.supabase.co/a.jpg"] * 11}, "uploaded_image_urls"),
        ({"prompt": "a cat", "uploaded_image_urls": "https://demo.supabase.co/a.jpg"}, "uploaded_image_urls"),
    ],
)
async def test_invalid_fields_get_422_naming_the_field(client: Any, body: dict[str, Any], field: str) -> None:
    """Each invalid field is named in the 422 body."""
    resp = await client.post(PROCESS, json=body)
    assert resp.status == 422
    error = await resp.json()
    assert error["error"] == "validation_error"
    assert error["field"] == field
    assert error["detail"]


@pytest.mark.parametrize(("preferences", "detail"), [
    ({"quality": "x" * 500}, "quality must be one of: speed, balanced, quality"),
    ({"format": "2:1"}, "format must be one of: square, portrait, landscape, 1:1, 4:3, 3:4, 16:9, 9:16 "
                        "(or a width x height such as 1920x1080)"),
    ({"style": "cyberpunk"}, "style must be one of: photorealistic, cinematic, anime, cartoon, watercolor, "
                             "oil_painting, sketch, digital_art, 3d_render, vintage, minimalist"),
])  # fmt: skip
async def test_a_preference_that_is_none_of_its_choices_is_told_the_choices(
    client: Any, preferences: dict[str, str], detail: str
) -> None:
    """The 422 echoed the whole bad value ("Invalid enum value 'xxx...'", 500 characters) and
    named no value that would do."""
    resp = await client.post(PROCESS, json={"prompt": "a cat", "user_preferences": preferences})
    assert resp.status == 422 and (await resp.json())["detail"] == detail


@pytest.mark.parametrize(("sent", "read"), [
    ({"style": "Oil painting", "format": "1024x1024"}, {"style": "oil_painting", "format": "1:1"}),
    ({"style": "3D Render", "format": "1920 x 1080"}, {"style": "3d_render", "format": "16:9"}),
    ({"style": "photo", "format": "vertical"}, {"style": "photorealistic", "format": "portrait"}),
    ({"style": "ANIME", "format": "9x16"}, {"style": "anime", "format": "9:16"}),
    ({"style": " ", "format": ""}, {"style": None, "format": None}),
    ({"quality": "Speed", "format": "16X9"}, {"quality": "speed", "format": "16:9"}),  # a QA pass's finds
    ({"quality": None, "format": "1920 X 1080"}, {"quality": "balanced", "format": "16:9"}),
    ({"format": "wide screen"}, {"format": "16:9"}),
])  # fmt: skip
async def test_a_style_or_format_is_read_the_way_people_write_it(
    client: Any, sent: dict[str, str], read: dict[str, str | None]
) -> None:
    stream = await client.post("/api/v1/enhanced/stream", json={"prompt": "a cat", "user_preferences": sent})
    assert stream.status == 200
    context = next(e for e in parse_events(await stream.read()) if e.event == "context").data
    assert {key: context["preferences"][key] for key in read} == read


async def test_preference_keys_the_gateway_does_not_use_are_left_out_as_the_plan_does(client: Any) -> None:
    """The app plan keeps quality, style and format and drops the rest (a client's AI toggle)."""
    body = {"prompt": "a cat", "user_preferences": {"quality": "speed", "enableAI": True, "colour": "red"}}
    stream = await client.post("/api/v1/enhanced/stream", json=body)
    assert stream.status == 200
    context = next(e for e in parse_events(await stream.read()) if e.event == "context").data
    assert context["preferences"] == {"quality": "speed", "style": None, "format": None}


async def test_optional_fields_sent_as_null_are_absent(client: Any) -> None:
    """JavaScript clients send null for an empty optional field: uploads too, as the others."""
    body = {"prompt": "a cat", "working_image_url": None, "uploaded_image_urls": None, "user_preferences": None}
    resp = await client.post(PROCESS, json=body)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["workflow_type"] == "image_generation"


async def test_the_stream_query_names_a_bad_style_as_its_parameter(client: Any) -> None:
    resp = await client.get("/api/v1/enhanced/stream", params={"prompt": "a cat", "style": "cyberpunk"})
    assert resp.status == 422 and (await resp.json())["field"] == "style"


async def test_prompt_of_exactly_2000_characters_is_accepted(client: Any) -> None:
    """The limit is inclusive."""
    resp = await client.post(PROCESS, json={"prompt": "a" * 2000})
    assert resp.status == 200


async def test_malformed_json_is_400(client: Any) -> None:
    resp = await client.post(PROCESS, data=b'{"prompt": ', headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "malformed_json"


@pytest.mark.parametrize("path", [PROCESS, "/api/v1/enhanced/stream", "/api/v1/enhanced/compare"])
async def test_json_nested_too_deeply_is_400_even_in_an_ignored_field(client: Any, path: str) -> None:
    body = b'{"prompt": "a cat", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "malformed_json"


async def test_body_over_64_kib_is_413(client: Any) -> None:
    body = b'{"prompt": "' + b"a" * (65 * 1024) + b'"}'
    resp = await client.post(PROCESS, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"


async def test_wrong_content_type_is_415(client: Any) -> None:
    resp = await client.post(PROCESS, data="prompt=a cat", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["error"] == "unsupported_media_type"


async def test_bad_user_id_header_is_422(client: Any) -> None:
    resp = await client.post(PROCESS, json={"prompt": "a cat"}, headers={"X-User-Id": "a b\tc"})
    assert resp.status == 422
    assert (await resp.json())["field"] == "X-User-Id"


def _post(path: str, *headers: bytes) -> bytes:
    return b"\r\n".join([f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Content-Type: application/json", *headers])


@pytest.mark.parametrize("body", [b"", b" \r\n "])
async def test_an_empty_body_is_400_saying_so(client: Any, body: bytes) -> None:
    resp = await client.post(PROCESS, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert await resp.json() == {"error": "malformed_json", "detail": "request body is empty: send a JSON object"}


@pytest.mark.parametrize("path", [PROCESS, "/api/v1/enhanced/stream", "/api/v1/enhanced/compare"])
async def test_a_body_that_is_not_utf8_is_400_not_a_crash(client: Any, path: str) -> None:
    status, content_type, error = await raw_request(client, _post(path), b'{"prompt": "\xff cat"}')
    assert (status, content_type, error["error"]) == (400, "application/json", "malformed_json")


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_400(
    client: Any, encoding: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    status, content_type, error = await raw_request(
        client, _post(PROCESS, b"Content-Encoding: " + encoding), b'{"prompt": "a cat"}'
    )
    assert (status, content_type, error["error"]) == (400, "application/json", "unreadable_body")
    assert error["detail"] == f"request body does not decode as its Content-Encoding says ({encoding.decode()})"
    # aiohttp reads what is left of the body after the response, before it closes the connection.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []  # the client's mistake


async def test_a_deflate_body_that_breaks_off_is_400_unreadable_not_an_unsupported_coding(client: Any) -> None:
    """Deflate is a coding the gateway reads: a body cut short is the body's fault (400), not a
    415 telling the client to send another coding."""
    cut = zlib.compress(b'{"prompt": "a cat on a sofa"}')[:-4]
    status, content_type, error = await raw_request(client, _post(PROCESS, b"Content-Encoding: deflate"), cut)
    assert (status, content_type, error["error"]) == (400, "application/json", "unreadable_body")


@pytest.mark.parametrize("coding", ["br", "zstd", "x-gzip", "gzip, br", "foo"])
async def test_a_body_in_a_coding_the_gateway_cannot_read_is_415_naming_the_ones_it_can(
    client: Any, coding: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not read as plain JSON, and not aiohttp's "please install Brotli": the client can resend."""
    headers = {"Content-Type": "application/json", "Content-Encoding": coding}
    resp = await client.post(PROCESS, data=b'{"prompt": "a cat"}', headers=headers)
    assert (resp.status, resp.headers["Accept-Encoding"]) == (415, "gzip, deflate")
    assert (await resp.json())["error"] == "unsupported_content_encoding"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_identity_is_a_body_sent_as_is(client: Any) -> None:
    status, _, body = await raw_request(client, _post(PROCESS, b"Content-Encoding: identity"), b'{"prompt": "a cat"}')
    assert status == 200 and body["success"] is True


async def test_a_host_port_of_non_ascii_digits_is_only_a_host_header(client: Any) -> None:
    """"\u00b2".isdigit() is true, and int() refuses it: the span's attributes must not crash on it."""
    head = _post(PROCESS).replace(b"Host: 127.0.0.1", "Host: 127.0.0.1:\u00b2".encode())
    status, _, body = await raw_request(client, head, b'{"prompt": "a cat"}')
    assert status == 200 and body["success"] is True


@pytest.mark.parametrize("limit", ["abc", "-5", "0", "\u00b2", "1" * 4301])
async def test_a_debug_traces_limit_that_is_not_a_count_is_422(client: Any, limit: str) -> None:
    resp = await client.get("/debug/traces", params={"limit": limit})
    assert resp.status == 422
    assert (await resp.json())["field"] == "limit"
    assert (await client.get("/debug/traces", params={"limit": "2"})).status == 200


@pytest.mark.parametrize("path", [PROCESS, "/api/v1/references"])
async def test_a_body_that_stops_arriving_is_408_and_the_connection_closes(make_client: MakeClient, path: str) -> None:
    """A client that sends its headers and then stalls mid-body holds a handler only until the
    body deadline: a JSON 408, then the server closes the connection (after lingering_time:
    the rest of the body may still come)."""
    client = await make_client(request_body_timeout=0.2)
    head = _post(path, b"Content-Length: 100") + b"\r\n\r\n"
    status, headers, body = await exchange(client, head + b'{"prompt": ')  # reads to EOF
    assert status == 408
    assert headers["content-type"].startswith("application/json")
    assert msgspec.json.decode(body)["error"] == "request_timeout"
