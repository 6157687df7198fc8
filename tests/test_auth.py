"""Authentication: Bearer keys (env and Postgres) and HS256 JWTs; 401, 403, admin scope."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import msgspec
import pytest
from aiohttp import web

import gateway.apikeys
from gateway.apikeys import Authenticator, PgKeyStore, generate_key, hash_key, parse_static_keys
from gateway.app import create_app
from gateway.appkeys import AUTH
from gateway.auth import _names_loopback, is_loopback
from gateway.config import ConfigError, Settings
from tests.conftest import raw_request
from tests.pg import TcpProxy
from tests.sse import parse_events

PROCESS = "/api/v1/enhanced/process"
ALICE = "alice-key-0123456789abcdef"
ROOT = "root-key-0123456789abcdef0"
KEYS = f"alice:{ALICE},root:{ROOT}:admin"
SECRET = "jwt-shared-secret-for-tests-0123456789"
ADMIN_ENDPOINTS = [
    "/metrics",
    "/api/v1/enhanced/metrics",
    "/api/v1/enhanced/health",
    "/api/v1/enhanced/analytics/intents",
    "/debug/traces",
    "/api/v1/admin/keys",
]
CLAIMS = {"sub": "carol", "exp": int(time.time()) + 3600}
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def token(sub: str = "carol", *, secret: str = SECRET, exp: float | None = None, **claims: Any) -> str:
    payload = {"sub": sub, "exp": int(exp if exp is not None else time.time() + 300), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
async def secured(make_client: Any) -> Any:
    return await make_client(gateway_api_keys=KEYS, gateway_jwt_secret=SECRET)


async def test_no_key_is_401_with_a_bearer_challenge(secured: Any) -> None:
    """No Authorization header: 401 JSON and WWW-Authenticate: Bearer."""
    resp = await secured.post(PROCESS, json={"prompt": "a cat"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    assert (await resp.json())["error"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong-key-0123456789abcdef", f"Basic {ALICE}", "Bearer", f"Bearer {ALICE[:-1]}", ALICE],
)
async def test_invalid_credentials_are_401(secured: Any, header: str) -> None:
    """Wrong, truncated or non-Bearer credentials: 401."""
    resp = await secured.post(PROCESS, json={"prompt": "a cat"}, headers={"Authorization": header})
    assert resp.status == 401
    assert "Bearer" in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize("credentials", [b"\xff\xfe", b"\xff.\xff.\xff", "caf\u00e9".encode()])
async def test_credentials_that_are_not_ascii_are_401_not_a_crash(secured: Any, credentials: bytes) -> None:
    """Bytes that are not UTF-8 reach the app as lone surrogates, which neither the key hash nor
    the JWT decoder can take."""
    head = b"POST /api/v1/enhanced/process HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    status, _, error = await raw_request(secured, head + b"Authorization: Bearer " + credentials,
                                         b'{"prompt": "a cat"}')
    assert (status, error["error"]) == (401, "unauthorized")


async def test_user_key_is_accepted_and_x_user_id_ignored(secured: Any) -> None:
    """A user key works; with keys configured, X-User-Id cannot impersonate anyone."""
    resp = await secured.post(
        "/api/v1/enhanced/stream", json={"prompt": "a cat"}, headers={**bearer(ALICE), "X-User-Id": "root"}
    )
    assert resp.status == 200
    context = next(e for e in parse_events(await resp.read()) if e.event == "context")
    assert context.data["user_id"] == "alice"


@pytest.mark.parametrize("path", ADMIN_ENDPOINTS)
async def test_admin_endpoints_are_403_for_users_and_open_to_admins(secured: Any, path: str) -> None:
    """Metrics, analytics, traces and key management need the admin scope."""
    assert (await secured.get(path)).status == 401
    assert (await secured.get(path, headers=bearer(ALICE))).status == 403
    assert (await secured.get(path, headers=bearer(token("carol")))).status == 403
    admin = await secured.get(path, headers=bearer(ROOT))
    assert admin.status not in (401, 403)


async def test_a_refused_admin_probe_is_logged_with_who_made_it(secured: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The key was valid, only not an admin's: the 403's log line names its user (it said null)."""
    with caplog.at_level("INFO", logger="gateway.request"):
        assert (await secured.get("/debug/traces", headers=bearer(ALICE))).status == 403
    (line,) = [r for r in caplog.records if r.name == "gateway.request"]
    assert line.user_id == "alice"  # type: ignore[attr-defined]


async def test_admin_reads_metrics(secured: Any) -> None:
    """The admin key gets the JSON metrics and the Prometheus text."""
    await secured.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(ALICE))
    metrics = await secured.get("/api/v1/enhanced/metrics", headers=bearer(ROOT))
    assert metrics.status == 200 and (await metrics.json())["classifications"] == 1
    prometheus = await secured.get("/metrics", headers=bearer(ROOT))
    assert prometheus.status == 200


@pytest.mark.parametrize("path", ["/health", "/openapi.json"])
async def test_public_paths_need_no_key(secured: Any, path: str) -> None:
    """Health and the API description stay public."""
    resp = await secured.get(path)
    assert resp.status not in (401, 403)


@pytest.mark.parametrize("subject", ["carol", "auth0|64f1c2a9e1", "google-oauth2|105702387751"])
async def test_valid_jwt_authenticates_its_subject(secured: Any, subject: str) -> None:
    """An HS256 JWT from the auth provider: the subject is the user id, in the shapes providers
    give it (Auth0's "provider|id" included)."""
    resp = await secured.get(
        "/api/v1/enhanced/stream", params={"prompt": "a cat"}, headers=bearer(token(subject))
    )
    assert resp.status == 200
    context = next(e for e in parse_events(await resp.read()) if e.event == "context")
    assert context.data["user_id"] == subject


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: token(exp=time.time() - 3600), id="expired"),
        pytest.param(lambda: token(secret="another-secret-0123456789abcdef-xyz"), id="wrong-secret"),
        pytest.param(lambda: jwt.encode(CLAIMS, None, algorithm="none"), id="alg-none"),
        pytest.param(lambda: jwt.encode({"sub": "carol"}, SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(lambda: jwt.encode({"exp": time.time() + 60}, SECRET, algorithm="HS256"), id="no-sub"),
        pytest.param(lambda: token("bad user id"), id="bad-sub"),
        pytest.param(lambda: token("carol\n"), id="sub-ending-in-a-newline"),
        pytest.param(lambda: jwt.encode(CLAIMS, SECRET * 2, algorithm="HS512"), id="HS512"),
    ],
)
async def test_bad_jwts_are_401(secured: Any, bad: Any) -> None:
    """Expired, forged, unsigned, incomplete or other-algorithm tokens are refused."""
    resp = await secured.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(bad()))
    assert resp.status == 401


async def test_an_expired_jwt_says_so_so_that_the_page_refreshes_it(secured: Any) -> None:
    """Expired is not forged: the detail and the challenge (RFC 6750's error_description) tell
    the frontend to refresh the token rather than sign the user out."""
    expired = await secured.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(token(exp=time.time() - 3600)))
    assert expired.status == 401 and "expired" in (await expired.json())["detail"]
    assert 'error_description="The access token expired"' in expired.headers["WWW-Authenticate"]
    forged = await secured.post(PROCESS, json={"prompt": "a cat"},
                                headers=bearer(token(secret="another-secret-0123456789abcdef-xyz")))
    assert "expired" not in forged.headers["WWW-Authenticate"] + (await forged.json())["detail"]


async def test_eventsource_may_send_a_jwt_as_access_token_on_the_get_stream_only(secured: Any) -> None:
    """EventSource cannot set headers: GET /stream takes ?access_token=<JWT>. Not an API key (a
    key in a URL outlives browser history and proxy logs), and no other path takes one."""
    stream = "/api/v1/enhanced/stream"
    ok = await secured.get(stream, params={"prompt": "animate this sunset", "access_token": token("dave")})
    assert ok.status == 200
    assert parse_events(await ok.read())[0].data["user_id"] == "dave"
    for credential in (ALICE, token("dave", secret="another-secret-0123456789abcdefgh"), "\u00e9t\u00e9"):
        refused = await secured.get(stream, params={"prompt": "x", "access_token": credential})
        assert refused.status == 401
        assert "access_token takes a valid JWT" in (await refused.json())["detail"]
    missing = await secured.get(stream, params={"prompt": "x"})
    assert missing.status == 401 and "access_token" in (await missing.json())["detail"]
    elsewhere = await secured.get("/api/v1/enhanced/metrics", params={"access_token": token("dave")})
    assert elsewhere.status == 401


async def test_jwt_audience_is_checked_when_configured(make_client: Any) -> None:
    """With GATEWAY_JWT_AUDIENCE, a token for another audience is refused."""
    client = await make_client(gateway_jwt_secret=SECRET, gateway_jwt_audience="authenticated")
    ok = await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(token(aud="authenticated")))
    assert ok.status == 200
    other = await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(token(aud="service_role")))
    assert other.status == 401


async def test_jwt_issuer_is_checked_when_configured(make_client: Any) -> None:
    """With GATEWAY_JWT_ISSUER, a token of another issuer (or none) signed with the same secret is refused."""
    ours = "https://app.supabase.co/auth/v1"
    client = await make_client(gateway_jwt_secret=SECRET, gateway_jwt_issuer=ours)
    ok = await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(token(iss=ours)))
    assert ok.status == 200
    for other in (token(iss="https://staging.supabase.co/auth/v1"), token()):
        assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(other))).status == 401


@pytest.mark.parametrize("presented", [ALICE, ROOT, "nobody-key-0123456789abcdef"])
async def test_every_configured_key_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    """hmac.compare_digest over hashes runs once per configured key, match or not, first or last."""
    calls: list[tuple[bytes, bytes]] = []
    real = gateway.apikeys.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(gateway.apikeys.hmac, "compare_digest", spy)
    keys = parse_static_keys(KEYS + ",bob:bob-key-0123456789abcdef")
    principal = await Authenticator(static_keys=keys).authenticate(presented)
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)  # fixed-length digests, never raw keys
    assert {b for _, b in calls} == {hash_key(presented)}
    assert (principal is None) == presented.startswith("nobody")


def test_short_jwt_secret_is_a_config_error() -> None:
    """An HS256 secret under 32 bytes is refused at start-up (RFC 7518 3.2)."""
    with pytest.raises(ConfigError, match="GATEWAY_JWT_SECRET"):
        Settings.from_env({"GATEWAY_JWT_SECRET": "too-short"})


def test_env_keys_are_kept_only_as_hashes() -> None:
    """The parsed key list holds digests, not the keys themselves."""
    keys = parse_static_keys(KEYS)
    assert ALICE.encode() not in repr(keys).encode() and ALICE not in repr(keys)
    assert [(p.user_id, p.admin) for _, p in keys] == [("alice", False), ("root", True)]


@pytest.mark.parametrize("value", ["alice", "alice:short", ":k0123456789abcdef", "a:k0123456789abcdef:root"])
def test_malformed_env_keys_are_a_config_error(value: str) -> None:
    """GATEWAY_API_KEYS entries must be user:key[:admin] with a long enough key."""
    with pytest.raises(ConfigError):
        parse_static_keys(value)


async def test_open_on_loopback_with_a_warning(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No keys on 127.0.0.1: open, X-User-Id honoured, and a start-up warning says so."""
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        client = await make_client()
    assert any("OPEN" in r.getMessage() for r in caplog.records)
    resp = await client.get(
        "/api/v1/enhanced/stream", params={"prompt": "a cat"}, headers={"X-User-Id": "dev"}
    )
    context = next(e for e in parse_events(await resp.read()) if e.event == "context")
    assert context.data["user_id"] == "dev"


@pytest.mark.parametrize(("host", "status"), [
    ("rebind.attacker.example", 403), ("rebind.attacker.example:8000", 403), ("127.0.0.1.nip.io", 403),
    ("localhost:8000", 200), ("127.0.0.1", 200), ("[::1]:8000", 200), ("app.localhost:8000", 200),
    ("localhost.:8000", 200), ("[::ffff:127.0.0.1]:8000", 200), ("localhost.attacker.example", 403),
])  # fmt: skip
async def test_an_open_gateway_answers_only_requests_addressed_to_loopback(
    make_client: Any, host: str, status: int
) -> None:
    """Open (no keys, on loopback) makes every caller an admin: a page that rebinds its own
    name to 127.0.0.1 (DNS rebinding) reached it from the browser with its name in Host."""
    client = await make_client()
    resp = await client.get("/api/v1/enhanced/metrics", headers={"Host": host})
    assert resp.status == status
    if status == 403:
        assert "addressed to loopback" in (await resp.json())["detail"]
    assert (await client.get("/", headers={"Host": host})).status == status  # the web UI: same rule


def test_only_localhost_itself_or_a_loopback_literal_may_be_bound_open() -> None:
    """The bind address goes through the resolver: dev.localhost or "localhost." may be anything
    there. The Host header is as a browser addressed it, where both reach loopback."""
    assert is_loopback("localhost") and is_loopback("127.0.0.1") and is_loopback("[::1]")
    assert not any(is_loopback(name) for name in ("dev.localhost", "localhost.", "127.0.0.1.", ".localhost"))
    assert _names_loopback("dev.localhost:8000") and _names_loopback("localhost.:8000")


async def test_open_on_purpose_takes_any_host(make_client: Any) -> None:
    """GATEWAY_ALLOW_ANONYMOUS=true: open by choice, wherever it is reached from."""
    client = await make_client(gateway_allow_anonymous=True)
    assert (await client.get("/api/v1/enhanced/metrics", headers={"Host": "gw.internal"})).status == 200


async def test_refuses_to_start_open_on_a_public_address(make_client: Any) -> None:
    """No keys and bound to 0.0.0.0: start-up fails unless GATEWAY_ALLOW_ANONYMOUS=true."""
    runner = web.AppRunner(create_app(msgspec.structs.replace(Settings.from_env({}), host="0.0.0.0")))
    try:
        with pytest.raises(ConfigError, match="GATEWAY_ALLOW_ANONYMOUS"):
            await runner.setup()
    finally:
        await runner.cleanup()
    anonymous = await make_client(host="0.0.0.0", gateway_allow_anonymous=True)
    assert (await anonymous.get("/health")).status == 200
    keyed = await make_client(host="0.0.0.0", gateway_api_keys=KEYS)
    assert (await keyed.get("/health")).status == 200


def test_serve_cli_refuses_public_bind_without_keys() -> None:
    """`python -m gateway serve --host 0.0.0.0` with no keys exits with the reason."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to serve on 0.0.0.0" in proc.stderr


# --- keys in Postgres -------------------------------------------------------------------------


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    name = f"test_auth_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def run_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_cli_creates_a_key_stored_only_as_its_hash(make_client: Any, pg_url: str) -> None:
    """`keys create` prints the key once; the table holds its SHA-256; the gateway accepts it."""
    created = run_cli("keys", "create", "--user", "dana", "--admin", database_url=pg_url)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("igw_") and len(key) > 40
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT * FROM gateway_api_keys")
    finally:
        await conn.close()
    assert len(rows) == 1 and rows[0]["key_hash"] == hash_key(key).hex()
    assert all(key not in str(value) for value in rows[0].values())

    client = await make_client(database_url=pg_url)
    assert (await client.post(PROCESS, json={"prompt": "a cat"})).status == 401  # a key exists: closed
    assert (await client.get("/api/v1/enhanced/metrics", headers=bearer(key))).status == 200
    listed = run_cli("keys", "list", database_url=pg_url)
    assert "dana" in listed.stdout and key not in listed.stdout


async def test_admin_api_creates_and_revokes_keys(make_client: Any, pg_url: str) -> None:
    """An admin creates a user key over HTTP, the key works, and revoking it locks it out."""
    client = await make_client(database_url=pg_url, gateway_api_keys=KEYS)
    created = await client.post("/api/v1/admin/keys", json={"user_id": "erin"}, headers=bearer(ROOT))
    assert created.status == 201 and created.headers["Cache-Control"] == "no-store"  # shown once
    new = await created.json()
    assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(new["key"]))).status == 200
    assert (await client.get("/api/v1/admin/keys", headers=bearer(new["key"]))).status == 403
    listing = await (await client.get("/api/v1/admin/keys", headers=bearer(ROOT))).json()
    assert [k["user_id"] for k in listing["keys"]] == ["erin"] and "key" not in listing["keys"][0]
    revoked = await client.delete(f"/api/v1/admin/keys/{new['key_id']}", headers=bearer(ROOT))
    assert (await revoked.json())["revoked"] == 1
    newline = await client.post("/api/v1/admin/keys", json={"user_id": "erin\n"}, headers=bearer(ROOT))
    assert newline.status == 422 and (await newline.json())["field"] == "user_id"
    as_text = await client.post("/api/v1/admin/keys", data='{"user_id": "erin"}',
                                headers={**bearer(ROOT), "Content-Type": "text/plain"})  # fmt: skip
    assert as_text.status == 415
    typo = await client.delete("/api/v1/admin/keys/zz", headers=bearer(ROOT))
    assert typo.status == 422 and (await typo.json())["field"] == "key_id"
    assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(new["key"]))).status == 401


async def test_unreachable_postgres_does_not_stop_env_keys(make_client: Any) -> None:
    """With Postgres down, the gateway starts and env keys still work. A key it cannot check is
    a 503 to retry, not a 401: clients drop a key that was refused."""
    client = await make_client(database_url="postgresql://postgres@127.0.0.1:1/none", gateway_api_keys=KEYS)
    assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(ALICE))).status == 200
    unknown = generate_key()  # shaped like an issued key, so the lookup does reach for Postgres
    resp = await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(unknown))
    assert (resp.status, (await resp.json())["error"], resp.headers["Retry-After"]) == (503, "database_unavailable", "5")


@pytest.mark.parametrize("key_in_table", [True, False])
async def test_a_keys_table_unreadable_at_start_up_keeps_authentication_on(
    make_client: Any, pg_url: str, key_in_table: bool
) -> None:
    """The keys table is the only key source and Postgres is down at start-up: whether a key
    exists is not known, so requests that need one get 503 (it used to serve OPEN, admin
    included, for the life of the process). Once Postgres answers, the table decides: its keys
    work, or with no key a loopback gateway opens as it would have at start-up."""
    key = None
    if key_in_table:
        pool = await asyncpg.create_pool(pg_url, min_size=0)
        store = PgKeyStore(pool)
        await store.ensure_schema()
        key = (await store.create("ida")).key
        await pool.close()
    proxy = TcpProxy()
    await proxy.start()
    port = proxy.port
    await proxy.stop()  # refused: Postgres is down
    client = await make_client(database_url=pg_url.replace(":5432/", f":{port}/"))
    auth = client.app[AUTH]
    assert auth.store is not None and not auth.open
    for path in (PROCESS, "/debug/traces"):
        resp = await client.request("POST" if path == PROCESS else "GET", path, json={"prompt": "a cat"})
        assert (resp.status, (await resp.json())["error"]) == (503, "database_unavailable"), path
    # /health needs no key, and says the instance refuses what does: a load balancer sends the
    # traffic elsewhere (it answered 200 "degraded" while every call got 503).
    health = await client.get("/health")
    assert (health.status, (await health.json())["dependencies"]["auth"]["requests"]) == (503, "refused")
    proxy.port = port
    await proxy.start()
    auth.store.RETRY_SECONDS = 0.0  # no waiting out the back-off after the failed count
    auth.store._down_until = 0.0
    if not key_in_table:  # /health itself asks the table (no request may come while out of rotation)
        assert (await client.get("/health")).status == 200 and auth.open
    anonymous = await client.post(PROCESS, json={"prompt": "a cat"})
    if key_in_table:
        assert anonymous.status == 401 and not auth.open
        assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(key))).status == 200
    else:
        assert anonymous.status == 200 and auth.open
    await proxy.stop()


async def test_a_health_probe_that_stops_waiting_leaves_the_keys_lookup_running(
    make_client: Any, pg_url: str
) -> None:
    """The keys table unread at start-up, then slow to answer: /health waits its 0.5 s and says
    "refused", but the lookup it started runs on to its own bound (shielded), so a later answer
    still decides. Cut with the probe, a table slower than 0.5 s was never read, and the
    instance stayed out of rotation for good."""
    proxy = TcpProxy()
    await proxy.start()
    port = proxy.port
    await proxy.stop()  # refused at start-up
    client = await make_client(database_url=pg_url.replace(":5432/", f":{port}/"))
    auth = client.app[AUTH]
    assert auth.store is not None and auth.open_if_no_keys is not None
    proxy.port = port
    await proxy.start()
    proxy.pause()  # Postgres is back, but slow: no byte passes yet
    auth.store.RETRY_SECONDS = 0.0
    auth.store._down_until = 0.0
    auth.store.LOOKUP_TIMEOUT = 5.0  # room on a slow machine: the probe's 0.5 s is what is tested
    health = await client.get("/health")
    assert (health.status, (await health.json())["dependencies"]["auth"]["requests"]) == (503, "refused")
    assert not auth.open
    proxy.resume()  # the answer comes after the probe stopped waiting, within the lookup's bound
    for _ in range(50):  # the lookup the probe left behind finishes without another request
        if auth.open:
            break
        await asyncio.sleep(0.02)
    assert auth.open and auth.open_if_no_keys is None
    assert (await client.get("/health")).status == 200
    await proxy.stop()


async def test_a_hung_key_store_costs_one_request_its_timeout_and_the_next_nothing(
    make_client: Any, pg_url: str
) -> None:
    """Postgres keeps its connections but answers nothing: the first lookup gives up after its
    1 s (not when asyncpg has wound the query down), and the next is refused at once."""
    proxy = TcpProxy()
    await proxy.start()
    client = await make_client(database_url=pg_url.replace(":5432/", f":{proxy.port}/"), gateway_api_keys=KEYS)
    assert (await client.get("/api/v1/admin/keys", headers=bearer(ROOT))).status == 200  # a connection is open
    proxy.pause()
    loop = asyncio.get_running_loop()
    for budget in (3.0, 0.5):
        started = loop.time()
        resp = await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(generate_key()))
        assert resp.status == 503 and loop.time() - started < budget
    proxy.resume()
    await proxy.stop()


async def test_key_management_without_its_database_is_503_not_500(make_client: Any) -> None:
    client = await make_client(database_url="postgresql://postgres@127.0.0.1:1/none", gateway_api_keys=KEYS)
    for method, path, body in [("POST", "/api/v1/admin/keys", {"user_id": "gus"}), ("GET", "/api/v1/admin/keys", None),
                               ("DELETE", "/api/v1/admin/keys/abcdef123456", None)]:  # fmt: skip
        resp = await client.request(method, path, json=body, headers=bearer(ROOT))
        assert (resp.status, (await resp.json())["error"]) == (503, "database_unavailable"), path


async def test_a_key_store_outage_costs_one_lookup_then_known_keys_pass_from_the_cache(
    make_client: Any, pg_url: str
) -> None:
    """After a failed lookup Postgres is left alone for RETRY_SECONDS: a hung database would
    otherwise cost every request its timeout. Keys seen before still pass (stale-if-error)."""
    proxy = TcpProxy()
    await proxy.start()
    client = await make_client(database_url=pg_url.replace(":5432/", f":{proxy.port}/"), gateway_api_keys=KEYS)
    store = client.app[AUTH].store
    assert store is not None
    key = (await (await client.post("/api/v1/admin/keys", json={"user_id": "hal"}, headers=bearer(ROOT))).json())["key"]
    assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(key))).status == 200
    store.CACHE_SECONDS = 0.0  # every lookup now wants Postgres
    await proxy.stop()
    before = store.queries
    for _ in range(5):
        assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(key))).status == 200
    assert store.queries == before + 1


async def test_a_flood_of_key_shaped_tokens_neither_crowds_out_real_keys_nor_makes_postgres_look_down(
    make_client: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random issued-key-shaped tokens, many at once, against a loaded database: they queue for
    their own connection and get 401 or a quick 503, while keys seen before are re-checked on the
    other. They used to queue for both until lookups timed out, which marked the store down:
    valid keys then got 503, and a revoked key whose cache had expired passed as stale."""
    client = await make_client(database_url=pg_url, gateway_api_keys=KEYS)
    store = client.app[AUTH].store
    assert store is not None
    made = [await (await client.post("/api/v1/admin/keys", json={"user_id": user}, headers=bearer(ROOT))).json()
            for user in ("ivy", "jon")]  # fmt: skip
    valid, revoked = made[0]["key"], made[1]["key"]
    for key in (valid, revoked):
        assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(key))).status == 200
    # A revoke here forgets only that key: clearing every cached check sent all keys to the
    # unseen slot, behind the flood.
    other = await (await client.post("/api/v1/admin/keys", json={"user_id": "kim"}, headers=bearer(ROOT))).json()
    assert (await client.delete(f"/api/v1/admin/keys/{other['key_id']}", headers=bearer(ROOT))).status == 200
    # Revoked elsewhere (the CLI, another instance): this instance still holds its cached check.
    await store.pool.execute("UPDATE gateway_api_keys SET revoked_at = now() WHERE key_hash LIKE $1 || '%'",
                             made[1]["key_id"])
    store.CACHE_SECONDS = 0.0  # their cached checks have expired: the next ones ask Postgres

    async def slow_fetch(digest: bytes) -> Any:  # a loaded database: each check holds a connection a while
        async with store.pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep(0.1)")
            return await conn.fetchrow("SELECT user_id, admin FROM gateway_api_keys WHERE key_hash = $1"
                                       " AND revoked_at IS NULL", digest.hex())

    monkeypatch.setattr(store, "_fetch", slow_fetch)
    flood = [client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(generate_key())) for _ in range(40)]
    mine = [client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(key)) for key in (valid, revoked)]
    *flooded, answer_valid, answer_revoked = await asyncio.gather(*flood, *mine)
    assert answer_valid.status == 200  # not crowded out by the flood
    assert answer_revoked.status == 401  # checked, and refused: never passed as stale
    statuses = {answer.status for answer in flooded}
    assert statuses <= {401, 503} and 503 in statuses  # some got a slot, the rest a quick 503
    assert store._down_until == 0.0  # busy is not down


async def test_unknown_keys_cost_postgres_at_most_one_query_each(make_client: Any, pg_url: str) -> None:
    """A client retrying a wrong key, or sending tokens no key can match, does not load Postgres."""
    client = await make_client(database_url=pg_url, gateway_api_keys=KEYS)
    store = client.app[AUTH].store
    assert store is not None
    wrong = generate_key()  # well-formed, never issued
    for _ in range(20):
        assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(wrong))).status == 401
    for garbage in ("igw_short", "not-a-key", "x" * 200):
        assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(garbage))).status == 401
    assert store.queries == 1
    created = await client.post("/api/v1/admin/keys", json={"user_id": "fay"}, headers=bearer(ROOT))
    new = (await created.json())["key"]
    assert (await client.post(PROCESS, json={"prompt": "a cat"}, headers=bearer(new))).status == 200
    assert store.queries == 2
