"""Per-request plumbing: the server span, trace id, metrics and one JSON log line.

Order on the app: request_middleware (outermost, sees the final status), error_middleware,
auth_middleware (gateway/auth.py; its errors become JSON like any other).
"""

from __future__ import annotations

import logging
import os
import re
import time

from aiohttp import web
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from gateway.appkeys import METRICS, STATS, TRACE_ID, TRACING, USER_ID
from gateway.errors import Handler
from observability.tracing import format_span_id, format_trace_id

log = logging.getLogger("gateway.request")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
# Scrapes, probes and the web UI's files and dashboard polling: a trace each would push the
# requests out of the /debug/traces buffer.
_UNTRACED = frozenset({"/metrics", "/health", "/", "/static/{name}", "/api/v1/enhanced/metrics"})
_NO_TRACER = trace.NoOpTracer()


def _trace_id(request: web.Request) -> str:
    """With tracing disabled (no spans): continue an incoming traceparent's trace, else start one."""
    match = _TRACEPARENT.match(request.headers.get("traceparent", ""))
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    return os.urandom(16).hex()


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One server span per request (continuing a W3C traceparent), its metrics and log line."""
    started = time.perf_counter()
    tracing = request.app[TRACING]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    tracer = tracing.tracer if route not in _UNTRACED and not route.startswith("/debug/") else _NO_TRACER
    span = tracer.start_span(
        f"{request.method} {route}" if resource is not None else request.method,
        context=tracing.propagator.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.path": request.path},
    )
    token = context.attach(trace.set_span_in_context(span))
    span_context = span.get_span_context()
    request[TRACE_ID] = trace_id = (
        format_trace_id(span_context.trace_id) if span_context.is_valid else _trace_id(request)
    )
    status = 500
    try:
        if span.is_recording():
            span.set_attributes(_request_attributes(request, resource is not None and route))
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Trace-Id"] = trace_id
        return response
    except BaseException as exc:  # a cancelled or broken request still ends its span
        span.record_exception(exc)
        span.set_attribute("error.type", type(exc).__qualname__)
        raise
    finally:
        duration = time.perf_counter() - started
        _end_span(span, status)
        request.app[STATS].record_request(route, status)
        request.app[METRICS].http_duration.record(
            duration,
            {"http.request.method": request.method, "http.route": route, "http.response.status_code": status},
        )
        log.info(
            "%s %s %d",
            request.method,
            request.path,
            status,
            extra={
                "trace_id": trace_id,
                "span_id": format_span_id(span_context.span_id) if span_context.is_valid else None,
                "user_id": request.get(USER_ID),
                "route": route,
                "status": status,
                "duration_ms": round(duration * 1000, 3),
            },
        )
        context.detach(token)


def _request_attributes(request: web.Request, route: str | bool) -> dict[str, str | int]:
    # The HTTP semantic conventions' names, as the contrib aiohttp-server instrumentation uses them.
    url = request.url
    attributes: dict[str, str | int] = {
        "url.scheme": request.scheme,
        "server.address": url.host or "",
        "network.protocol.version": f"{request.version.major}.{request.version.minor}",
    }
    if url.port:
        attributes["server.port"] = url.port
    if route:
        attributes["http.route"] = route
    if request.remote:
        attributes["client.address"] = request.remote
    if user_agent := request.headers.get("User-Agent"):
        attributes["user_agent.original"] = user_agent
    return attributes


def _end_span(span: trace.Span, status: int) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if status >= 500:  # server spans: 4xx is the client's error, not ours
            span.set_status(StatusCode.ERROR)
            span.set_attribute("error.type", str(status))
    span.end()

