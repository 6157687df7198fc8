"""CORS: a browser app on another origin may call the gateway (CORS_ALLOWED_ORIGINS).

Off by default: only the same origin (the web UI, or an app served behind the same host). With
origins configured, a preflight (OPTIONS with Access-Control-Request-Method) from an allowed
origin is answered 204 before authentication and limits, since browsers send it without
credentials; one from any other origin is a 403. Every response the app makes to an allowed
origin, streams and errors included, says that origin may read it and exposes the headers a
frontend reads (X-Trace-Id, Retry-After, RateLimit-*, WWW-Authenticate): a 401 or a 429 the
page may not read reaches it as a bare network error. (The HTTP parser's refusals of malformed
requests are made before the app and carry none.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.errors import Forbidden, Handler

ALLOW_METHODS = "GET, POST, DELETE"
# What the gateway's clients send: a key or token, a JSON body (maybe compressed), a trace to
# continue, EventSource's reconnect id, and the open mode's user id; and what common frontend
# libraries add on their own (EventSource polyfills' Cache-Control and X-Requested-With, a
# request id), which would otherwise fail the preflight.
ALLOW_HEADERS = ("Authorization, Content-Type, Content-Encoding, Last-Event-ID, traceparent, "
                 "tracestate, X-User-Id, Cache-Control, X-Requested-With, X-Request-Id")
EXPOSE_HEADERS = ("X-Trace-Id, X-Heartbeat-Seconds, Retry-After, RateLimit-Limit, RateLimit-Remaining, "
                  "RateLimit-Reset, RateLimit-Policy, WWW-Authenticate")
MAX_AGE = "600"  # seconds a browser may reuse a preflight's answer


def _allows(origins: frozenset[str], origin: str) -> bool:
    return "*" in origins or origin in origins


def cors_middleware(origins: frozenset[str]) -> Middleware:
    """Answers preflights; it runs before authentication and the rate limiter."""

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
                and not isinstance(request.match_info.http_exception, web.HTTPNotFound)):
            # (A path that does not exist is the router's 404, preflight or not.)
            origin = request.headers.get(hdrs.ORIGIN, "")
            if not _allows(origins, origin):
                raise Forbidden(f"origin {origin or '(none)'} is not in CORS_ALLOWED_ORIGINS")
            return web.Response(status=204, headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOW_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE,
            })  # fmt: skip
        return await handler(request)

    return preflight


def refuse_other_sites(request: web.Request, origins: frozenset[str]) -> None:
    """Refuses what another site's page makes the browser send, unless its origin is allowed.

    A page on any site can make a visitor's browser send a GET without asking (an EventSource,
    an <img>, an <iframe>): it cannot read the answer, but the request runs. Against a gateway
    open on a developer's laptop, that is someone else's page spending the developer's LLM key
    through GET /api/v1/enhanced/stream. Browsers say where a request comes from: Sec-Fetch-Site
    (with the request's mode and destination), and Origin on a cross-origin request where they
    send no Sec-Fetch-* (older Safari; plain http to a LAN address). Other clients send neither.
    A link followed to one of the gateway's pages (a trace, from a chat message) still opens;
    nobody links to the API. Called by the auth middleware, first: a middleware of its own cost
    1% of a cache hit.
    """
    headers = request.headers
    site = headers.get("Sec-Fetch-Site")
    origin = headers.get(hdrs.ORIGIN)
    if site is None:
        if origin is None or _allows(origins, origin) or _same_origin(origin, headers):
            return
    elif site in ("same-origin", "none") or (origin is not None and _allows(origins, origin)):
        return
    elif (headers.get("Sec-Fetch-Dest") == "document" and headers.get("Sec-Fetch-Mode") == "navigate"
          and not request.path.startswith("/api/")):
        return
    raise Forbidden(f"a request from {origin or 'another site'}'s page: the origin must be in "
                    "CORS_ALLOWED_ORIGINS")


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _same_origin(origin: str, headers: Mapping[str, str]) -> bool:
    """Whether `origin` is the gateway's own, as the Host header names it, or as a proxy in
    front that rewrote Host says in X-Forwarded-Host (no page on another site can set that
    header on a request the browser sends without a preflight). Host names compare without
    case, and a scheme's default port written or not."""
    scheme, _, authority = origin.partition("://")
    own = _authority(authority, scheme)
    forwarded = headers.get("X-Forwarded-Host", "").partition(",")[0]  # the first proxy's, in a chain
    return any(own == _authority(named, scheme) for named in (headers.get(hdrs.HOST), forwarded) if named)


def _authority(text: str, scheme: str) -> str:
    """host:port, lower-cased, with the scheme's default port where none is written."""
    text = text.strip().lower()
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:  # no port: an IPv6 literal's own colons are inside its brackets
        host, port = text, ""
    return f"{host}:{port or _DEFAULT_PORTS.get(scheme, '')}"


def cors_headers(origins: frozenset[str]) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook: the CORS headers of every response, a stream's included
    (its headers leave before the handler returns, so a middleware would be too late)."""
    any_origin = "*" in origins

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        if not any_origin:
            response.headers.add(hdrs.VARY, hdrs.ORIGIN)  # caches keep one answer per origin
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and _allows(origins, origin):
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*" if any_origin else origin
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSE_HEADERS

    return add
