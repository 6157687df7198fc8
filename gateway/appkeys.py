"""Typed keys for everything that lives on the aiohttp Application or Request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from gateway.analytics.views import Analytics
from gateway.analytics.writer import LogWriter
from gateway.apikeys import Authenticator
from gateway.config import Settings
from gateway.urlpolicy import CachedUrlPolicy
from observability.metrics import Metrics
from observability.stats import RequestStats
from observability.timeline import Timeline
from observability.tracing import StageInstruments, Tracing
from pipeline.breaker import CircuitBreaker
from pipeline.cache import IntentCache
from pipeline.catalog import Catalog
from pipeline.limits import Admission, RateLimiter
from pipeline.llm_usage import LLMUsage
from pipeline.protocols import Classifier, Stage
from pipeline.references import UserTagStore
from pipeline.search.lookup import ReferenceLookup
from pipeline.slots import ClassificationSlots

if TYPE_CHECKING:  # gateway.redis reads these keys; importing it here would be a cycle
    from gateway.redis import RedisConnection

SETTINGS = web.AppKey("settings", Settings)
STATS = web.AppKey("stats", RequestStats)
# Register observable metrics on it in your cleanup_ctx (see observability/metrics.py).
METRICS = web.AppKey("metrics", Metrics)
# The app's tracer provider (app[TRACING].provider for contrib instrumentations) and ring buffer.
TRACING = web.AppKey("tracing", Tracing)
STAGE_INSTRUMENTS = web.AppKey("stage_instruments", StageInstruments)
TIMELINE = web.AppKey("timeline", Timeline)  # hourly/daily buckets for the dashboard
CLASSIFIER = web.AppKey("classifier", Classifier)
CATALOG = web.AppKey("catalog", Catalog)
SLOTS = web.AppKey("slots", ClassificationSlots)
REFERENCES = web.AppKey("references", UserTagStore)
# Set only with DATABASE_URL: the request log writer and the analytics views.
REQUEST_LOG = web.AppKey("request_log", LogWriter)
ANALYTICS = web.AppKey("analytics", Analytics)
STAGES = web.AppKey("stages", tuple[Stage, ...])
# Present only when an image search provider is configured.
REFERENCE_LOOKUP = web.AppKey("reference_lookup", ReferenceLookup)
# Each dependency registers a probe here in its cleanup_ctx; /health asks them all.
# A probe answers {"state": "ok" | "degraded" | "down" | "not_configured", ...details}.
HealthProbe = Callable[[], Awaitable[dict[str, object]]]
HEALTH_PROBES = web.AppKey("health_probes", dict[str, HealthProbe])
HEALTH_PROBE_SECONDS = 0.5  # each probe's bound: /health answers within a load balancer's usual 1 s
OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)  # built once the routes are final


class InFlight(Protocol):
    """A pipeline request in flight (an EventStream, or routes.JsonRun), as app.end_requests sees it."""

    shutting_down: bool  # set just before end_requests cancels its handler: that cancel is ours


IN_FLIGHT = web.AppKey("in_flight", dict[asyncio.Task[Any], InFlight])  # by handler
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)  # set on SIGTERM: a cancellation is ours
# Handlers whose body is still arriving; True once end_requests has cancelled one (that cancel is ours).
BODIES_ARRIVING = web.AppKey("bodies_arriving", dict[asyncio.Task[Any], bool])
# The shared Redis connection (gateway/redis.py), None when REDIS_URL is unset.
REDIS: web.AppKey[RedisConnection | None] = web.AppKey("redis")
IMAGE_URL_POLICY = web.AppKey("image_url_policy", CachedUrlPolicy)
INTENT_CACHE = web.AppKey("intent_cache", IntentCache)
LIMITER = web.AppKey("limiter", RateLimiter)
AUTH = web.AppKey("auth", Authenticator)
# The LLM path (gateway/llm.py): its circuit breaker and its calls, tokens and spend.
LLM_BREAKER = web.AppKey("llm_breaker", CircuitBreaker)
LLM_USAGE = web.AppKey("llm_usage", LLMUsage)

# Per request, set by the middlewares.
TRACE_ID = web.RequestKey("trace_id", str)
# time.perf_counter() as the request arrived: what elapsed_ms and processing_time count from,
# so a wait for the limiter (a slow Redis) or for the body is in them.
ARRIVED = web.RequestKey("arrived", float)
USER_ID = web.RequestKey("user_id", str)
ARM = web.RequestKey("arm", str)  # the A/B arm that answered, for the request log line
ADMISSION = web.RequestKey("admission", Admission)  # set by rate_limit_middleware
