"""Authentication and scopes: `Authorization: Bearer <API key or HS256 JWT>`.

Scopes by path: public (/health, /openapi.json, the web UI), admin (metrics, analytics,
traces, key management) and user (everything else, so a new route is protected by default).
With no key source configured the gateway is open (the caller may name itself with X-User-Id)
and only allowed on loopback; see `auth_ctx`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from gateway.analytics.pool import close_pool
from gateway.apikeys import USER_ID_PATTERN, Authenticator, PgKeyStore, Principal, parse_static_keys
from gateway.appkeys import AUTH, HEALTH_PROBE_SECONDS, HEALTH_PROBES, SETTINGS, USER_ID
from gateway.config import ConfigError, Settings
from gateway.cors import refuse_other_sites
from gateway.errors import DatabaseUnavailable, Forbidden, Handler, Unauthorized, ValidationFailed

log = logging.getLogger(__name__)

Scope = Literal["public", "user", "admin"]

PUBLIC_PATHS = frozenset({"/", "/health", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
ADMIN_PATHS = frozenset({"/metrics", "/api/v1/enhanced/metrics", "/api/v1/enhanced/health"})
ADMIN_PREFIXES = ("/api/v1/enhanced/analytics", "/debug/", "/api/v1/admin/")
# EventSource cannot send an Authorization header, so its GET stream may carry the app's JWT as
# ?access_token= (RFC 6750 2.3). JWTs only: they expire within the hour, where an API key in a
# URL (browser history, proxy logs) would work for ever. The gateway logs and traces paths only.
QUERY_TOKEN_PATHS = frozenset({"/api/v1/enhanced/stream"})

# Keys and JWTs are printable ASCII; anything else (bytes that are not UTF-8 arrive as lone
# surrogates) is not a credential, and must not reach the hash or the JWT decoder.
_BEARER = re.compile(r"^Bearer +([\x21-\x7e]+) *\Z", re.IGNORECASE)
_TOKEN = re.compile(r"[\x21-\x7e]+")


def scope_for(path: str) -> Scope:
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return "public"
    if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES):
        return "admin"
    return "user"


def is_loopback(host: str) -> bool:
    """`localhost` itself or a loopback address literal: what the gateway may bind open to (a
    name such as dev.localhost goes through the resolver, which decides where it really binds)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    refuse_other_sites(request, auth.cors_origins)
    scope = scope_for(request.path)
    if auth.open_if_no_keys is not None and scope != "public":
        await auth.decide()
    if auth.open:
        if auth.loopback_only and not _names_loopback(request.host):
            # A web page that rebinds its own name to 127.0.0.1 reaches an open gateway from the
            # browser, with its own name in Host: every caller is an admin here, so refuse it.
            raise Forbidden("an open gateway (no keys) answers only requests addressed to loopback")
        request[USER_ID] = _claimed_user(request)
    elif scope == "public":
        request[USER_ID] = "anonymous"
    else:
        principal = await _principal(auth, request)
        request[USER_ID] = principal.user_id  # known, so a refused probe's log line names who
        if scope == "admin" and not principal.admin:
            raise Forbidden("this endpoint needs an admin key")
    return await handler(request)


async def _principal(auth: Authenticator, request: web.Request) -> Principal:
    header = request.headers.get("Authorization")
    if header is None and request.method == "GET" and request.path in QUERY_TOKEN_PATHS:
        return _query_token_principal(auth, request)
    if header is None:
        raise Unauthorized("send Authorization: Bearer <API key or JWT>" if auth.jwt_secret
                           else "send Authorization: Bearer <API key>")
    match = _BEARER.match(header)
    principal = await auth.authenticate(match.group(1)) if match else None
    if principal is None:
        raise Unauthorized("invalid or revoked credentials", invalid=True)
    return principal


def _query_token_principal(auth: Authenticator, request: web.Request) -> Principal:
    token = request.query.get("access_token")
    if token is None:
        raise Unauthorized("send Authorization: Bearer <API key>, or from EventSource ?access_token=<JWT>")
    principal = auth.verify_jwt(token) if _TOKEN.fullmatch(token) else None
    if principal is None:
        raise Unauthorized("access_token takes a valid JWT (API keys go in the Authorization header)",
                           invalid=True)
    return principal


@functools.lru_cache(maxsize=64)
def _names_loopback(host: str) -> bool:
    """Whether a Host header names this machine's loopback ("localhost:8000", "[::1]:8000")."""
    try:
        name = urlsplit("//" + host).hostname
    except ValueError:
        return False
    if name is None:
        return False
    # As a browser addressed it: "localhost." and *.localhost (RFC 6761) reach loopback there.
    name = name.rstrip(".")
    return is_loopback(name) or name.endswith(".localhost")


def _claimed_user(request: web.Request) -> str:
    # Open mode only (loopback development): the caller says who they are.
    user_id = request.headers.get("X-User-Id", "anonymous")
    if not USER_ID_PATTERN.match(user_id):
        raise ValidationFailed("X-User-Id must be 1-128 letters, digits or _.@:|-", field="X-User-Id")
    return user_id


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    """Build the authenticator; refuse to start open on a non-loopback address."""
    settings = app[SETTINGS]
    static_keys = parse_static_keys(settings.gateway_api_keys or "")
    pool: asyncpg.Pool | None = None
    store: PgKeyStore | None = None
    db_keys: int | None = 0
    if settings.database_url:
        # min_size=0: no connection at start-up, so an unreachable Postgres does not stop the gateway.
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=2)
        store = PgKeyStore(pool)
        db_keys = await _count_db_keys(store)
    configured = bool(static_keys or settings.gateway_jwt_secret or db_keys)
    undecided = db_keys is None and not configured
    if undecided:
        # "Cannot read the keys table" is not "no keys": opening here handed an outage at start-up
        # an open gateway, admin included, for the life of the process.
        log.warning("authentication stays on until the keys table can be read: requests that need a key "
                    "get 503 until then")
    else:
        _check_exposure(settings, configured=configured, database=store is not None)
    if not configured and not undecided and "*" in settings.cors_origins():
        # Open mode makes every caller an admin: any web page the developer opens could then
        # read the traces and analytics, or create keys, through the browser.
        raise ConfigError("CORS_ALLOWED_ORIGINS=* needs authentication: with no keys every caller is "
                          "an admin; list the app's origins instead, or configure keys")
    app[AUTH] = Authenticator(
        static_keys=static_keys,
        store=store,
        jwt_secret=settings.gateway_jwt_secret,
        jwt_audience=settings.gateway_jwt_audience,
        jwt_issuer=settings.gateway_jwt_issuer,
        open_access=not configured and not undecided,
        # Open because bound to loopback (not because told to): callers must address loopback.
        loopback_only=is_loopback(settings.host) and not settings.gateway_allow_anonymous,
        open_if_no_keys=_may_run_open(settings) if undecided else None,
        cors_origins=settings.cors_origins(),
    )
    if undecided:
        app[HEALTH_PROBES]["auth"] = functools.partial(_keys_probe, app[AUTH])
    try:
        yield
    finally:
        if pool is not None:
            # Bounded: a bare close() waits for a hung server to answer each connection's goodbye
            # (measured: 4 minutes past SIGTERM, where Kubernetes kills at 30 s).
            await close_pool(pool, grace=1.0)  # two connections for key lookups: 1 s is ample


async def _keys_probe(auth: Authenticator) -> dict[str, object]:
    """/health while the keys table was unread at start-up: every request that needs a key gets
    503, so the instance is no use to a load balancer. The probe asks the table itself: with the
    instance out of rotation, no request would come to ask it."""
    if auth.open_if_no_keys is not None:
        try:
            # Shielded: a lookup the probe stops waiting for runs on to its own 1 s timeout (a
            # slow connect is not cut short each time), and its failure sets the store's back-off.
            async with asyncio.timeout(HEALTH_PROBE_SECONDS):
                await asyncio.shield(auth.deciding())
        except (DatabaseUnavailable, TimeoutError):
            return {"state": "down", "requests": "refused",
                    "detail": "the API keys table cannot be read: requests that need a key get 503"}
    return {"state": "ok"}


async def _count_db_keys(store: PgKeyStore) -> int | None:
    """Active keys in Postgres; None when it cannot say."""
    try:
        return await store.count_active()
    except DatabaseUnavailable as exc:
        log.warning("cannot read API keys from Postgres at start-up: %r", exc.__cause__)
        return None


def _may_run_open(settings: Settings) -> bool:
    """Whether the gateway may serve without keys: on loopback or when told to, never with CORS *."""
    allowed = is_loopback(settings.host) or settings.gateway_allow_anonymous
    return allowed and "*" not in settings.cors_origins()


def _check_exposure(settings: Settings, *, configured: bool, database: bool) -> None:
    if configured:
        log.info("authentication on: Bearer API keys%s", " and JWTs" if settings.gateway_jwt_secret else "")
        return
    if is_loopback(settings.host):
        log.warning(
            "no API keys configured: the gateway is OPEN (any caller, admin included) on %s",
            settings.host,
        )
        return
    if settings.gateway_allow_anonymous:
        log.warning("no API keys configured and GATEWAY_ALLOW_ANONYMOUS=true: OPEN on %s", settings.host)
        return
    hint = " (the keys table has no active key)" if database else ""
    raise ConfigError(
        f"refusing to serve on {settings.host} without authentication{hint}: set GATEWAY_API_KEYS, "
        "GATEWAY_JWT_SECRET or create a key (python -m gateway keys create), "
        "or set GATEWAY_ALLOW_ANONYMOUS=true"
    )
