"""The application factory: connects to nothing at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.analytics.service import postgres_ctx
from gateway.appkeys import (
    BODIES_ARRIVING,
    CATALOG,
    CLASSIFIER,
    HEALTH_PROBES,
    IMAGE_URL_POLICY,
    IN_FLIGHT,
    INTENT_CACHE,
    LLM_BREAKER,
    LLM_USAGE,
    METRICS,
    REDIS,
    REFERENCE_LOOKUP,
    REFERENCES,
    SETTINGS,
    SHUTTING_DOWN,
    SLOTS,
    STAGES,
    STATS,
    TIMELINE,
    TRACING,
)
from gateway.auth import auth_ctx, auth_middleware
from gateway.classifiers import open_classifier
from gateway.config import Settings
from gateway.cors import cors_headers, cors_middleware
from gateway.errors import error_middleware
from gateway.limits import LIMITED_PATHS, limiter_ctx, rate_limit_middleware
from gateway.llm import llm_ctx
from gateway.middleware import request_middleware
from gateway.openapi import add_openapi_route
from gateway.redis import intent_cache_ctx, redis_ctx
from gateway.routes import add_routes
from gateway.search import observe_reference_search, open_reference_lookup
from gateway.telemetry import telemetry_ctx
from gateway.urlpolicy import CachedUrlPolicy, ImageUrlPolicy, parse_hosts
from gateway.web import add_web_routes
from gateway.wire import MAX_BODY_BYTES
from observability.stats import RequestStats
from observability.timeline import Timeline
from pipeline.catalog import Catalog
from pipeline.protocols import Classifier, Stage
from pipeline.references import MemoryReferenceStore
from pipeline.rollout import Rollout
from pipeline.slots import ClassificationSlots
from pipeline.stages.context import ContextStage
from pipeline.stages.intent import IntentStage
from pipeline.stages.model import ModelStage
from pipeline.stages.prompt import PromptStage
from pipeline.stages.references import ReferencesStage

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, classifier: Classifier | None = None) -> web.Application:
    """Build the gateway. `classifier` replaces the configured one (tests inject slow ones)."""
    origins = settings.cors_origins()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            request_middleware, error_middleware,
            *([cors_middleware(origins)] if origins else []),  # preflights carry no credentials
            auth_middleware, rate_limit_middleware,
        ],
    )
    if origins:
        app.on_response_prepare.append(cors_headers(origins))
    app[SETTINGS] = settings
    app[STATS] = RequestStats(pipeline_routes=LIMITED_PATHS)
    app[TIMELINE] = Timeline()
    app[CATALOG] = Catalog.load()
    app[REFERENCES] = MemoryReferenceStore(
        per_user=settings.max_tags_per_user, in_all=settings.max_tags_in_memory
    )
    app[SLOTS] = ClassificationSlots(
        settings.max_concurrent_classifications, settings.classification_queue_timeout
    )
    app[IN_FLIGHT] = {}  # a handler leaves it in its finally: a WeakSet cost ~1% per stream
    app[BODIES_ARRIVING] = {}
    app[SHUTTING_DOWN] = asyncio.Event()
    app[HEALTH_PROBES] = {}
    app[IMAGE_URL_POLICY] = CachedUrlPolicy(ImageUrlPolicy(
        allowed_hosts=parse_hosts(settings.image_url_allowed_hosts),
        allow_http=settings.image_url_allow_http,
    ))

    async def classifier_ctx(app: web.Application) -> AsyncIterator[None]:
        if classifier is not None:
            app[CLASSIFIER] = classifier
            yield
            return
        async with open_classifier(
            settings, breaker=app[LLM_BREAKER], usage=app[LLM_USAGE], spans=app[TRACING].client_span,
            runs=app[STATS].embedded_runs,
        ) as opened:
            app[CLASSIFIER] = opened
            yield

    app.cleanup_ctx.append(telemetry_ctx)  # first: later contexts register metrics on it
    app.cleanup_ctx.append(auth_ctx)  # refuses to start open off loopback
    app.cleanup_ctx.append(redis_ctx)  # before the rest: they may share its connection
    app.cleanup_ctx.append(llm_ctx)  # the breaker shares Redis; the classifier uses both
    app.cleanup_ctx.append(intent_cache_ctx)
    app.cleanup_ctx.append(limiter_ctx)
    app.cleanup_ctx.append(classifier_ctx)
    app.cleanup_ctx.append(reference_search_ctx)
    app.cleanup_ctx.append(postgres_ctx)  # before the stages: it may replace app[REFERENCES]
    app.cleanup_ctx.append(stages_ctx)
    app.on_shutdown.append(end_requests)
    add_routes(app)
    add_web_routes(app)
    add_openapi_route(app)
    return app


async def stages_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[STAGES] = (
        ContextStage(),
        IntentStage(
            ai=app[CLASSIFIER],
            slots=app[SLOTS],
            rollout=Rollout(
                settings.ai_classification_enabled, settings.ai_classification_rollout_percentage
            ),
            cache=app[INTENT_CACHE],
        ),
        ModelStage(app[CATALOG]),
        PromptStage(app[REFERENCES]),
    )
    app[STAGES] += reference_stages(app)
    yield


async def reference_search_ctx(app: web.Application) -> AsyncIterator[None]:
    trace_configs = app[TRACING].client_trace_configs()
    async with open_reference_lookup(app[SETTINGS], app[REDIS], trace_configs=trace_configs) as lookup:
        if lookup is not None:
            app[REFERENCE_LOOKUP] = lookup
            app[HEALTH_PROBES]["reference_search"] = lookup.health
            observe_reference_search(app[METRICS], lookup)
        yield


def reference_stages(app: web.Application) -> tuple[Stage, ...]:
    # No provider configured: no step at all, so the stream is exactly as without the feature.
    lookup = app.get(REFERENCE_LOOKUP)
    return (ReferencesStage(lookup),) if lookup is not None else ()


async def end_requests(app: web.Application) -> None:
    """On SIGTERM: pipeline requests in flight get SHUTDOWN_GRACE_SECONDS to finish; those still
    running then end in a way a client can retry on, instead of a connection cut when aiohttp's
    own shutdown timeout cancels them: a stream with an `error` event (shutting_down) and a
    proper end of stream, a JSON request with a 503 shutting_down."""
    app[SHUTTING_DOWN].set()
    arriving = app[BODIES_ARRIVING]
    for handler in arriving:  # their bodies never arrive now (aiohttp reads no more): 503 at once
        arriving[handler] = True
        handler.cancel()
    in_flight = app[IN_FLIGHT]
    grace = app[SETTINGS].shutdown_grace_seconds
    if in_flight:
        log.info("stopping: %d requests in flight get up to %g s", len(in_flight), grace)
    # Requests that get into the pipeline meanwhile (their auth or limits were waiting on Redis)
    # share what is left of the grace, rather than being cancelled the moment it ends.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while in_flight and (left := deadline - loop.time()) > 0:
        await asyncio.wait(list(in_flight), timeout=left, return_when=asyncio.FIRST_COMPLETED)
    still_running = list(in_flight.items())
    for handler, run in still_running:
        run.shutting_down = True  # so the handler tells this cancel from its client leaving
        handler.cancel()  # the handler answers shutting_down
    if still_running:
        log.warning("stopping: %d requests still running after the grace answer shutting_down",
                    len(still_running))
        await asyncio.wait([handler for handler, _ in still_running], timeout=1.0)
