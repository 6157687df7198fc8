"""Telemetry for the app: tracing and metrics built from Settings in a cleanup_ctx; /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import web
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
from opentelemetry.sdk.version import __version__ as sdk_version

from gateway.appkeys import METRICS, SETTINGS, SLOTS, STAGE_INSTRUMENTS, STATS, TRACING
from gateway.config import Settings
from observability.metrics import Metrics
from observability.stats import RequestStats
from observability.tracing import StageInstruments, Tracing
from pipeline.slots import ClassificationSlots

DEFAULT_SERVICE_NAME = "intent-gateway"


def resource_of(settings: Settings) -> Resource:
    """What the OTel spec makes of OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (values are
    percent-decoded; OTEL_SERVICE_NAME wins only when set), read from Settings rather than
    os.environ as the SDK's Resource.create would, with the SDK's own telemetry.sdk.*."""
    attributes: dict[str, str] = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
    }
    for pair in (settings.otel_resource_attributes or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    named = settings.otel_service_name or attributes.get(SERVICE_NAME)
    attributes[SERVICE_NAME] = named or DEFAULT_SERVICE_NAME
    return Resource(attributes)


async def telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
    """First on cleanup_ctx, so every later context can register its own metrics."""
    settings = app[SETTINGS]
    resource = resource_of(settings)
    metrics = Metrics(resource=resource)
    # Which service these series are (Prometheus' target_info convention): the resource's
    # service.name is on every span, but a scrape carries no resource.
    service = {key.replace(".", "_"): str(value) for key, value in resource.attributes.items()
               if key.startswith("service.")}  # fmt: skip
    metrics.gauge("target.info", lambda: [(1, service)], description="The service these metrics are from")
    observe_gateway(metrics, app[STATS], app[SLOTS])
    tracing = tracing_of(settings, resource, metrics)
    if (export := tracing.export) is not None:
        metrics.counter(
            "gateway.trace_export.spans",
            lambda: [(export.queued, {"outcome": "queued"}), (export.exported, {"outcome": "exported"}),
                     (export.failed, {"outcome": "failed"})],
            description="Spans for the OTLP collector: queued, then exported or failed (it was down, slow or "
            "refused them); queued and neither for long: dropped at the exporter's full queue",
        )
    app[METRICS] = metrics
    app[TRACING] = tracing
    app[STAGE_INSTRUMENTS] = StageInstruments(tracing, metrics.stage_duration)
    try:
        yield
    finally:
        await tracing.close()  # flushes the batch to the collector, off the event loop
        metrics.close()


def tracing_of(settings: Settings, resource: Resource, metrics: Metrics) -> Tracing:
    return Tracing.from_options(
        resource=resource,
        sampler=settings.otel_traces_sampler,
        sampler_arg=settings.otel_traces_sampler_arg,
        otlp_endpoint=settings.otel_exporter_otlp_endpoint,
        otlp_traces_endpoint=settings.otel_exporter_otlp_traces_endpoint,
        otlp_headers=settings.otel_exporter_otlp_headers,
        buffer_limit=settings.debug_traces_limit,
        disabled=settings.otel_sdk_disabled,
        meter_provider=metrics.provider,
    )


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
        "gateway.rollout.arm",
        lambda: [(n, {"arm": arm}) for arm, n in stats.arms.items()],
        description="Answers by A/B arm (ai or existing), to compare the two",
    )
    metrics.counter(
        "gateway.workflows",
        lambda: [(n, {"workflow_type": workflow}) for workflow, n in stats.workflows.items()],
        description="Answers by workflow type",
    )
    metrics.counter(
        "gateway.embedded_classifier.runs",
        lambda: [(n, {"tier": tier}) for tier, n in stats.embedded_runs.items()],
        description="Embedded classifier runs (cache misses) by the tier that answered: static, minilm, "
        "or static_busy (MiniLM's queue was over LOCAL_ESCALATION_BUDGET_MS)",
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
