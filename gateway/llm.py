"""The LLM path's app-wide parts: usage counters, the circuit breaker, /health and metrics.

The breaker's state lives in Redis when REDIS_URL is set (app[REDIS], gateway/redis.py), so
every instance stops calling a dead upstream together; otherwise in this process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.appkeys import HEALTH_PROBES, LLM_BREAKER, LLM_USAGE, METRICS, REDIS, SETTINGS
from gateway.config import Settings
from observability.metrics import Metrics
from pipeline.breaker import BreakerPolicy, BreakerState, CircuitBreaker, upstream_key
from pipeline.breaker_redis import RedisBreakerStore
from pipeline.llm_usage import LLMUsage, Prices

BREAKER_CODES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def uses_llm(settings: Settings) -> bool:
    return settings.intent_classifier in ("llm", "cascade")


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        failure_threshold=settings.circuit_breaker_failure_threshold,
        reset_timeout=settings.circuit_breaker_timeout,
        success_threshold=settings.circuit_breaker_success_threshold,
    )


def llm_usage(settings: Settings) -> LLMUsage:
    return LLMUsage(
        Prices(
            input_per_million=settings.llm_price_input_per_million,
            output_per_million=settings.llm_price_output_per_million,
        )
    )


async def llm_ctx(app: web.Application) -> AsyncIterator[None]:
    """After redis_ctx (shares its connection), before the classifier (which uses these)."""
    settings, redis = app[SETTINGS], app[REDIS]
    store = RedisBreakerStore(redis) if redis is not None else None
    base_url = settings.openai_base_url or "https://api.openai.com/v1"
    upstream = upstream_key("llm", base_url, settings.openai_model)
    breaker = app[LLM_BREAKER] = CircuitBreaker("llm", breaker_policy(settings), store=store, key=upstream)
    usage = app[LLM_USAGE] = llm_usage(settings)

    async def probe() -> dict[str, object]:
        if not uses_llm(settings):
            return {"state": "not_configured"}
        state = await breaker.state()
        return {
            "state": "ok" if state is BreakerState.CLOSED else "degraded",
            "breaker": state.value,
            "breaker_shared": store is not None,
            "model": settings.openai_model,
        }

    app[HEALTH_PROBES]["llm"] = probe
    observe_llm(app[METRICS], usage, breaker)
    yield


def llm_metrics(app: web.Application) -> dict[str, object]:
    """The `llm` section of GET /api/v1/enhanced/metrics."""
    return {**app[LLM_USAGE].snapshot(), "breaker": app[LLM_BREAKER].snapshot()}


def observe_llm(metrics: Metrics, usage: LLMUsage, breaker: CircuitBreaker) -> None:
    """Publish the LLM counters to /metrics; read only when scraped."""
    metrics.counter("gateway.llm.calls", lambda: usage.calls, description="Upstream LLM requests sent")
    metrics.counter("gateway.llm.retries", lambda: usage.retries, description="LLM requests retried")
    metrics.counter(
        "gateway.llm.failures",
        lambda: [(n, {"reason": reason}) for reason, n in usage.failures.items()],
        description="LLM classifications without a usable answer, by reason",
    )
    metrics.counter(
        "gateway.llm.tokens",
        lambda: [
            (usage.prompt_tokens, {"kind": "prompt"}),
            (usage.completion_tokens, {"kind": "completion"}),
        ],
        description="Tokens the LLM reported using",
    )
    metrics.counter(
        "gateway.llm.spend", lambda: usage.spend_usd, unit="USD", description="Estimated LLM spend"
    )
    metrics.counter(
        "gateway.llm.cascade",
        lambda: [
            (usage.cascade_local, {"decision": "kept_local"}),
            (usage.cascade_escalated, {"decision": "escalated"}),
        ],
        description="Cascade requests kept local or escalated to the LLM",
    )
    metrics.gauge(
        "gateway.llm.breaker.state",
        lambda: BREAKER_CODES[breaker.seen_state],
        description="LLM circuit breaker: 0 closed, 1 half-open, 2 open",
    )
