"""Per-user rate and cost limits at the HTTP edge: admission before any stream starts.

The rules live in pipeline/limits.py; this module picks the limiter (Redis or memory), refuses
with 429 in a middleware, charges the model stage's estimated cost, and serves /usage.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.appkeys import (
    ADMISSION,
    HEALTH_PROBES,
    LIMITER,
    METRICS,
    REDIS,
    REQUEST_LOG,
    SETTINGS,
    TRACE_ID,
    TRACING,
    USER_ID,
)
from gateway.config import Settings
from gateway.errors import Handler, RateLimited, rate_limit_headers
from gateway.responses import json_response
from gateway.sse import EventStream
from pipeline.limits import (
    Admission,
    Limits,
    LimitsUnavailable,
    MemoryRateLimiter,
    RateLimiter,
)
from pipeline.limits_redis import RedisRateLimiter
from pipeline.redis_link import RedisLink

# Requests that run the pipeline; health, metrics and usage are never limited.
LIMITED_PATHS = frozenset({"/api/v1/enhanced/process", "/api/v1/enhanced/stream", "/api/v1/enhanced/compare"})


def _finished_stream(request: web.Request) -> bool:
    """An EventSource reconnecting after `done`: the route answers 204 and runs nothing, so the
    reconnect (which every open EventSource makes) costs no quota."""
    return request.method == "GET" and request.headers.get("Last-Event-ID") == EventStream.LAST_EVENT_ID


def limits_of(settings: Settings) -> Limits:
    return Limits(
        requests_per_minute=settings.rate_limit_requests_per_minute,
        requests_per_hour=settings.rate_limit_requests_per_hour,
        cost_per_hour=settings.cost_limit_per_hour,
    )


async def _closed_limits_probe(redis: RedisLink) -> dict[str, object]:
    """RATE_LIMIT_FAIL_MODE=closed: while Redis is unreachable every request is refused (503),
    which /health must say, or a load balancer keeps sending traffic to an instance that serves
    none of it. Redis's own entry says whether it answers; this one, what that means here."""
    if redis.available:
        return {"state": "ok", "fail_mode": "closed"}
    return {"state": "down", "fail_mode": "closed", "requests": "refused",
            "detail": "Redis is unreachable and RATE_LIMIT_FAIL_MODE=closed: requests get 503"}


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after redis_ctx): exact limits on Redis, else per instance in memory."""
    settings, redis = app[SETTINGS], app[REDIS]
    limiter: RateLimiter = MemoryRateLimiter(limits_of(settings))
    if redis is not None:
        fail_mode, spans = settings.rate_limit_fail_mode, app[TRACING].client_span
        limiter = RedisRateLimiter(redis, limits_of(settings), fail_mode=fail_mode, spans=spans)
        if fail_mode == "closed":
            app[HEALTH_PROBES]["rate_limits"] = functools.partial(_closed_limits_probe, redis)
    app[LIMITER] = limiter
    app[METRICS].counter(
        "gateway.rate_limited",
        lambda: [(n, {"kind": kind}) for kind, n in limiter.counters.refused.items()],
        description="Requests refused with 429, by the limit that refused them",
    )
    yield


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit or refuse (429) before the handler, so a refusal never opens a stream."""
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in LIMITED_PATHS or _finished_stream(request):
        return await handler(request)
    user_id = request[USER_ID]
    try:
        decision = await request.app[LIMITER].admit(user_id)
    except asyncio.CancelledError:  # the client left while Redis decided
        record_unstarted(request, "client_disconnected")
        raise
    except LimitsUnavailable as exc:  # Redis down and RATE_LIMIT_FAIL_MODE=closed: a 503
        record_unstarted(request, exc.code)
        raise
    if not decision.allowed:
        record_unstarted(request, "rate_limited")
        raise RateLimited(decision)
    request[ADMISSION] = Admission(user_id=user_id, token=decision.token)
    response = await handler(request)
    if not response.prepared:  # a stream's headers are long gone
        response.headers.update(rate_limit_headers(decision))
    return response


def record_unstarted(request: web.Request, reason: str) -> None:
    """The request log's row for a pipeline request that ended before its body was read (the
    pipeline logs every one that got further): refused, or its client gone."""
    if (request_log := request.app.get(REQUEST_LOG)) is not None:  # Postgres analytics
        route = request.path.rsplit("/", 1)[-1]
        request_log.record_unstarted(user_id=request[USER_ID], trace_id=request[TRACE_ID], route=route,
                                     reason=reason)  # fmt: skip


async def charge_cost(request: web.Request, estimated_cost: float) -> None:
    """Charge the request's model-stage estimate once (compare runs two pipelines: the first)."""
    admission = request.get(ADMISSION)
    if admission is None or admission.charged:
        return
    admission.charged = True
    await request.app[LIMITER].charge(admission.user_id, admission.token, estimated_cost)


async def usage(request: web.Request) -> web.Response:
    """GET /api/v1/enhanced/usage: the caller's counts in the sliding windows, and the limits."""
    result = await request.app[LIMITER].usage(request[USER_ID])
    return json_response(result)
