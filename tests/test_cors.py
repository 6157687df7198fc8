"""CORS_ALLOWED_ORIGINS: a browser app on another origin may call the gateway; others may not."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings
from tests.conftest import MakeClient
from tests.sse import parse_events

APP = "https://app.example.com"
KEYS = "alice:k-alice-0123456789abcdef"
PROCESS = "/api/v1/enhanced/process"
STREAM = "/api/v1/enhanced/stream"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


async def test_off_by_default_no_origin_gets_cors_headers(make_client: MakeClient) -> None:
    """And a request from another origin's page is refused, not run (see the cross-site tests)."""
    client = await make_client()
    response = await client.post(PROCESS, json={"prompt": "a cat"}, headers={"Origin": APP})
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = await client.options(PROCESS, headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in preflight.headers


async def test_a_preflight_from_an_allowed_origin_is_answered_without_credentials(make_client: MakeClient) -> None:
    """Browsers send the preflight with no Authorization: it must not meet the 401."""
    client = await make_client(cors_allowed_origins=f"{APP}, https://admin.example.com", gateway_api_keys=KEYS)
    response = await client.options(PROCESS, headers=PREFLIGHT)
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "last-event-id"} <= allowed
    # Added by EventSource polyfills and request-id middleware on their own: the preflight failed.
    assert {"cache-control", "x-requested-with", "x-request-id"} <= allowed
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in response.headers.getall("Vary")


async def test_a_preflight_to_a_path_that_does_not_exist_is_a_404(make_client: MakeClient) -> None:
    client = await make_client(cors_allowed_origins=APP)
    response = await client.options("/api/v1/enhanced/nope", headers=PREFLIGHT)
    assert response.status == 404 and (await response.json())["error"] == "not_found"


async def test_a_preflight_from_another_origin_is_refused(make_client: MakeClient) -> None:
    client = await make_client(cors_allowed_origins=APP, gateway_api_keys=KEYS)
    response = await client.options(PROCESS, headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_answers_and_errors_alike_are_readable_by_the_allowed_origin(make_client: MakeClient) -> None:
    """The frontend reads the 200, and also the 401 and 429 (with Retry-After) it must act on."""
    client = await make_client(cors_allowed_origins=APP, gateway_api_keys=KEYS, rate_limit_requests_per_minute=1)
    auth = {"Origin": APP, "Authorization": "Bearer k-alice-0123456789abcdef"}
    ok = await client.post(PROCESS, json={"prompt": "a cat"}, headers=auth)
    unauthorized = await client.post(PROCESS, json={"prompt": "a cat"}, headers={"Origin": APP})
    limited = await client.post(PROCESS, json={"prompt": "a cat"}, headers=auth)
    for response, status in ((ok, 200), (unauthorized, 401), (limited, 429)):
        assert response.status == status
        assert response.headers["Access-Control-Allow-Origin"] == APP
        exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"X-Trace-Id", "X-Heartbeat-Seconds", "Retry-After", "RateLimit-Remaining"} <= exposed
    other = await client.post(PROCESS, json={"prompt": "a cat"},
                              headers={**auth, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers  # the browser withholds it


async def test_a_stream_carries_the_headers_it_sends_before_its_first_event(make_client: MakeClient) -> None:
    client = await make_client(cors_allowed_origins=APP)
    response = await client.post(STREAM, json={"prompt": "animate this sunset"}, headers={"Origin": APP})
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert parse_events(await response.read())[-1].event == "done"


async def test_star_allows_any_origin(make_client: MakeClient) -> None:
    client = await make_client(cors_allowed_origins="*", gateway_api_keys=KEYS)
    response = await client.options(PROCESS, headers={**PREFLIGHT, "Origin": "https://anywhere.example"})
    assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in response.headers


async def test_star_is_refused_with_no_authentication(make_client: MakeClient) -> None:
    """Open mode makes every caller an admin: * would hand the admin API to any web page."""
    with pytest.raises(ConfigError, match="needs authentication"):
        await make_client(cors_allowed_origins="*")


async def test_preflights_are_counted_under_their_own_route_and_not_traced(make_client: MakeClient) -> None:
    client = await make_client(cors_allowed_origins=APP)
    assert (await client.options(PROCESS, headers=PREFLIGHT)).status == 204
    stats = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert stats["requests_by_route"].get("preflight") == 1
    assert (await client.post(PROCESS, json={"prompt": "a cat"})).status == 200
    roots = [trace["root"] for trace in await (await client.get("/debug/traces")).json()]
    assert roots == ["POST /api/v1/enhanced/process"]  # the preflight left none


@pytest.mark.parametrize("value", ["https://app.example.com/", "app.example.com", "ftp://x.example",
                                   "https://app.example.com/path", "*, https://app.example.com",
                                   "https://app.example.com:443", "https://app.example.com:99999",
                                   "https://app.example.com:abc", "https://exämple.com", "https://app.example.com?"])
def test_what_is_not_an_origin_is_refused_at_start(value: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS"):
        Settings.from_env({"CORS_ALLOWED_ORIGINS": value})


def test_origins_are_compared_as_browsers_send_them() -> None:
    settings = Settings.from_env({"CORS_ALLOWED_ORIGINS": "HTTPS://App.Example.com:8443, http://localhost:5173"})
    assert settings.cors_origins() == {"https://app.example.com:8443", "http://localhost:5173"}


CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Origin": "https://evil.example"}


@pytest.mark.parametrize("headers", [
    CROSS_SITE,  # an EventSource on another site's page
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},  # an <img>: no Origin
    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Origin": "https://other.example.com"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},  # reloaded in a loop
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},  # nobody links the API
    {"Origin": "https://evil.example"},  # a browser that sends no Sec-Fetch-* (older Safari, plain http on a LAN)
])  # fmt: skip
async def test_another_sites_page_cannot_make_the_browser_run_a_stream(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    """Open on a laptop, the gateway ran whatever any visited page asked for through the
    developer's browser (the page cannot read the answer, but the LLM key pays for it)."""
    client = await make_client()
    refused = await client.get(STREAM, params={"prompt": "a cat"}, headers={"X-User-Id": "dev", **headers})
    assert refused.status == 403 and (await refused.json())["error"] == "forbidden"
    usage = await (await client.get("/api/v1/enhanced/usage", headers={"X-User-Id": "dev"})).json()
    assert usage["requests_last_minute"] == 0  # refused before the pipeline and the limiter


async def test_same_origin_pages_allowed_origins_links_and_non_browsers_are_served(make_client: MakeClient) -> None:
    client = await make_client(cors_allowed_origins=APP)
    for headers in (
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},  # the gateway's own web UI
        {**CROSS_SITE, "Origin": APP},  # the app, allowed
        {"Origin": APP},  # the app, from a browser that sends no Sec-Fetch-*
        {"Origin": f"http://{client.host}:{client.port}"},  # the same origin, from such a browser
        {},  # curl, the app's backend, the load tester
    ):
        answered = await client.get(STREAM, params={"prompt": "a cat"}, headers=headers)
        assert answered.status == 200, headers
        assert parse_events(await answered.read())[-1].event == "done"
    # The web UI over plain http to a LAN name (no Sec-Fetch-*): its own origin however Host
    # spells it, or behind a proxy that rewrote Host and said so in X-Forwarded-Host.
    for headers in ({"Origin": "http://dev.localhost", "Host": "dev.localhost:80"},
                    {"Origin": "http://dev.localhost:8000", "Host": "DEV.LOCALHOST:8000"},
                    {"Origin": "http://gw.example", "Host": "127.0.0.1:8000", "X-Forwarded-Host": "gw.example"},
                    {"Origin": "http://gw.example", "Host": "127.0.0.1:8000",
                     "X-Forwarded-Host": "gw.example, 10.0.0.1"}):  # chained proxies
        answered = await client.post(PROCESS, json={"prompt": "a cat"}, headers=headers)
        assert answered.status == 200, headers
    other = {"Origin": "http://evil.example", "Host": "127.0.0.1:8000", "X-Forwarded-Host": "gw.example"}
    assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=other)).status == 403
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert (await client.get("/debug/traces", headers=link)).status == 200  # a trace linked from a chat
