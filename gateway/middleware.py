"""Per-request plumbing: the server span, trace id, metrics and one JSON log line.

Order on the app (gateway/app.py): request_middleware (outermost, sees the final status),
error_middleware, then the CORS preflight answer (gateway/cors.py, with origins configured),
auth_middleware (gateway/auth.py) and rate_limit_middleware (gateway/limits.py), whose errors
become JSON like any other.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from aiohttp import HttpVersion, web

from gateway.appkeys import ARM, ARRIVED, METRICS, SHUTTING_DOWN, STATS, TRACE_ID, TRACING, USER_ID
from gateway.errors import Handler
from gateway.sse import EventStream
from observability.spans import LightSpan

log = logging.getLogger("gateway.request")

# nginx's "client closed request": a request whose client left before its answer was finished is
# not a server error (500) in the metrics, the log line or the span.
CLIENT_CLOSED = 499

# Scrapes, probes and the web UI's files and dashboard polling: a trace each would push the
# requests out of the /debug/traces buffer.
_UNTRACED = frozenset({"/metrics", "/health", "/", "/static/{name}", "/api/v1/enhanced/metrics",
                       "/api/v1/enhanced/health", "preflight"})


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One server span per request (continuing a W3C traceparent), its metrics and log line."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    # A CORS preflight matches no route (OPTIONS is not one of them): named, and not traced.
    route = (resource.canonical if resource is not None
             else "preflight" if request.method == "OPTIONS" else "unmatched")
    app = request.app
    span = app[TRACING].server_span(
        f"{request.method} {route}" if resource is not None else request.method,
        request.headers,
        {"http.request.method": request.method, "url.path": _clip(request.path)},
        # By path, not route: /debug/traces/<not an id> matches no route and was traced.
        traced=route not in _UNTRACED and not request.path.startswith("/debug/"),
    )
    request[TRACE_ID] = trace_id = span.trace_id
    request[ARRIVED] = started
    status = 500
    ended_with: str | None = None  # a stream's in-band error that ended it, after its 200
    with span:
        try:
            if span.recording:
                span.attributes.update(_request_attributes(request, resource is not None and route))
            response = await handler(request)
            status = response.status
            if type(response) is EventStream:
                ended_with = response.ended_with
            if not response.prepared:
                response.headers["X-Trace-Id"] = trace_id
            return response
        except asyncio.CancelledError:  # the client went away (handler cancellation), or shutdown
            status = 503 if app[SHUTTING_DOWN].is_set() else CLIENT_CLOSED
            raise
        finally:
            duration = time.perf_counter() - started
            _set_status(span, status, ended_with)
            app[STATS].record_request(route, status)
            app[METRICS].http_duration.record(duration, request.method, route, status)
            if log.isEnabledFor(logging.INFO):  # the line's fields cost more than the check
                log.info(
                    "%s %s %d",
                    request.method,
                    request.path,
                    status,
                    extra={
                        "trace_id": trace_id,
                        "span_id": span.span_id,
                        "user_id": request.get(USER_ID),
                        "arm": request.get(ARM),
                        "route": route,
                        "status": status,
                        "ended_with": ended_with,
                        "duration_ms": round(duration * 1000, 3),
                    },
                )


def _request_attributes(request: web.Request, route: str | bool) -> dict[str, str | int]:
    """The server span's attributes from the request line and headers (shared: do not change)."""
    return _http_attributes(request.scheme, request.host, request.version, route, request.remote,
                            request.headers.get("User-Agent"))  # fmt: skip


# A pure function, memoized: keep-alive clients send the same values request after request, and
# the string work below cost ~12k instructions (1.7% of a cache hit) each time.
@functools.lru_cache(maxsize=1024)
def _http_attributes(
    scheme: str, host_header: str, version: HttpVersion, route: str | bool, remote: str | None,
    user_agent: str | None,
) -> dict[str, str | int]:
    # The HTTP semantic conventions' names, as the contrib aiohttp-server instrumentation uses them.
    # From the Host header as sent: building request.url (yarl) costs more than the whole span.
    host, sep, port = host_header.rpartition(":")
    # "²".isdigit(), but int() refuses it; int() also refuses over 4,300 digits (and no port has 6)
    if not (sep and port.isascii() and port.isdigit() and len(port) <= 5):
        host, port = host_header, ""
    attributes: dict[str, str | int] = {
        "url.scheme": scheme,
        "server.address": _clip(host.strip("[]")),
        "network.protocol.version": f"{version.major}.{version.minor}",
    }
    if port:
        attributes["server.port"] = int(port)
    if route:
        attributes["http.route"] = route
    if remote:
        attributes["client.address"] = remote
    if user_agent:
        attributes["user_agent.original"] = _clip(user_agent)
    return attributes


# What a span keeps of a value the client chose (a path, a Host, a User-Agent): request lines and
# headers may be 8-64 KiB each, and kept in the /debug/traces buffer whole, anyone could make the
# gateway hold ~68 KB a request (401s are traced too).
MAX_ATTRIBUTE_CHARS = 256


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS] + "\u2026"


def _set_status(span: LightSpan, status: int, ended_with: str | None) -> None:
    if span.recording:
        span.attributes["http.response.status_code"] = status
        if status >= 500:  # server spans: 4xx is the client's error, not ours
            span.attributes["error.type"] = str(status)
            span.set_error(f"HTTP {status}")
        elif ended_with is not None:  # overloaded after the stream began: a failure all the same
            span.attributes["error.type"] = ended_with
            span.set_error(f"the stream ended with an error event: {ended_with}")

