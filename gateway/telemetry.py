"""Telemetry for the app: built from Settings in a cleanup_ctx, and the gateway's own metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.sdk.resources import Resource

from gateway.appkeys import METRICS, SETTINGS, SLOTS, STATS
from gateway.config import Settings
from observability.metrics import Metrics
from observability.stats import RequestStats
from pipeline.slots import ClassificationSlots


def resource_of(settings: Settings) -> Resource:
    """service.name and OTEL_RESOURCE_ATTRIBUTES, read from Settings rather than os.environ."""
    attributes: dict[str, str] = {}
    for pair in (settings.otel_resource_attributes or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    attributes["service.name"] = settings.otel_service_name
    return Resource(attributes)


async def telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
    """First on cleanup_ctx, so every later context can register its own metrics."""
    settings = app[SETTINGS]
    metrics = Metrics(resource=resource_of(settings))
    observe_gateway(metrics, app[STATS], app[SLOTS])
    app[METRICS] = metrics
    yield
    metrics.close()


def observe_gateway(metrics: Metrics, stats: RequestStats, slots: ClassificationSlots) -> None:
    """Publish the request counters and slot occupancy, read only when /metrics is scraped."""
    metrics.counter(
        "gateway.requests",
        lambda: [(n, {"route": route, "status": status}) for (route, status), n in stats.responses.items()],
        description="HTTP requests by route and status",
    )
    metrics.counter(
        "gateway.classifications",
        lambda: [(n, {"source": source}) for source, n in stats.sources.items()],
        description="Classifications by the classifier that decided",
    )
    metrics.counter(
        "gateway.workflows",
        lambda: [(n, {"workflow_type": workflow}) for workflow, n in stats.workflows.items()],
        description="Answers by workflow type",
    )
    metrics.counter("gateway.cache.hits", lambda: stats.cache_hits, description="Intent cache hits")
    metrics.gauge(
        "gateway.cache.hit_ratio",
        lambda: stats.cache_hits / max(stats.classifications, 1),
        unit="1",
        description="Intent cache hits per classification since start",
    )
    metrics.counter("gateway.fallbacks", lambda: stats.fallbacks, description="Answers that used a fallback")
    metrics.counter(
        "gateway.errors",
        lambda: [(n, {"code": code}) for code, n in stats.errors.items()],
        description="Errors by code",
    )
    metrics.gauge("gateway.classification_slots.in_use", lambda: slots.in_use, description="Slots held")
    metrics.gauge("gateway.classification_slots.waiting", lambda: slots.waiting, description="Waiters")
    metrics.gauge("gateway.classification_slots.limit", lambda: slots.limit, description="Slot limit")


async def prometheus_metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition format."""
    response = web.Response(text=request.app[METRICS].render_prometheus())
    response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return response
