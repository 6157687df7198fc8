"""Per-request plumbing: trace id and one structured log line per request, then identity.

Order on the app: request_middleware (outermost, sees the final status), error_middleware,
identity_middleware (its errors become JSON like any other).
"""

from __future__ import annotations

import logging
import os
import re
import time

from aiohttp import web

from gateway.appkeys import METRICS, STATS, TRACE_ID, USER_ID
from gateway.errors import Handler, ValidationFailed

log = logging.getLogger("gateway.request")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_USER_ID = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")


def _trace_id(request: web.Request) -> str:
    """Continue an incoming W3C traceparent's trace, else start one."""
    match = _TRACEPARENT.match(request.headers.get("traceparent", ""))
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    return os.urandom(16).hex()


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request[TRACE_ID] = trace_id = _trace_id(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Trace-Id"] = trace_id
        return response
    finally:
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        request.app[STATS].record_request(route_name, status)
        duration = time.perf_counter() - started
        request.app[METRICS].http_duration.record(
            duration,
            {"http.request.method": request.method, "http.route": route_name, "http.response.status_code": status},
        )
        log.info(
            "%s %s %d",
            request.method,
            request.path,
            status,
            extra={
                "trace_id": trace_id,
                "user_id": request.get(USER_ID),
                "status": status,
                "duration_ms": round(duration * 1000, 3),
            },
        )


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Until authentication lands, the caller says who they are.
    user_id = request.headers.get("X-User-Id", "anonymous")
    if not _USER_ID.match(user_id):
        raise ValidationFailed("X-User-Id must be 1-128 letters, digits or _.@:-", field="X-User-Id")
    request[USER_ID] = user_id
    return await handler(request)
