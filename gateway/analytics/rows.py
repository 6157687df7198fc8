"""One log entry per finished request, and its rows in the two log tables."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec

from pipeline.events import ProcessResult
from pipeline.types import Arm, PipelineRequest

LogPrompts = Literal["full", "hash", "none"]


class LogEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway knows when a request finishes; also the spill file's line format."""

    request_id: uuid.UUID  # with created_at, the key that makes a second write a no-op
    created_at: datetime
    user_id: str
    trace_id: str
    prompt: str | None
    prompt_sha256: str | None
    route: str | None
    classified_workflow: str
    confidence: float
    processing_time_ms: int
    used_fallback: bool
    cache_hit: bool
    rate_limited: bool
    intent_source: str | None
    arm: str | None
    selected_model: str | None  # None: refused before a model was chosen (no model_selection_logs row)
    fallback_models: list[str]
    estimated_cost: float | None
    estimated_time: int | None
    circuit_breaker_state: str | None = None
    error_message: str | None = None
    # "ok", or why there is no result: rate_limited, overloaded, client_disconnected, shutting_down
    outcome: str = "ok"
    # The prompt asked for nothing; None: not known (no classification, or an older spill line).
    no_clear_intent: bool | None = None


def log_entry(
    preq: PipelineRequest,
    result: ProcessResult,
    *,
    prompts: LogPrompts,
    route: str,
    hash_key: bytes | None = None,
    breaker_state: str | None = None,
) -> LogEntry:
    text, digest = prompt_columns(preq.prompt, prompts, hash_key)
    return LogEntry(
        request_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        user_id=preq.user_id,
        trace_id=preq.trace_id,
        prompt=text,
        prompt_sha256=digest,
        route=route,
        classified_workflow=result.workflow_type.value,
        confidence=result.intent_confidence,
        processing_time_ms=round(result.processing_time * 1000),
        used_fallback=result.fallback_used,
        cache_hit=result.cache_hit,
        rate_limited=False,
        intent_source=result.intent_source.value,
        arm=result.metadata.arm,
        selected_model=result.model_selection.model_id,
        fallback_models=list(result.model_selection.fallback_models),
        estimated_cost=result.estimated_cost,
        estimated_time=result.estimated_time,
        circuit_breaker_state=breaker_state,
        no_clear_intent=result.metadata.no_clear_intent,
    )


# The workflow of a request that ended before a result (rate limited, overloaded, client gone).
UNCLASSIFIED = "unclassified"


def unstarted_entry(*, user_id: str, trace_id: str, route: str, reason: str) -> LogEntry:
    """A request that ended before its body was read: refused by the rate limiter (flagged
    rate_limited) or left by its client while it waited for admission or sent its body.
    No prompt (none was read), no model."""
    return unfinished_entry(
        user_id=user_id, trace_id=trace_id, route=route, reason=reason, rate_limited=reason == "rate_limited"
    )


def unfinished_entry(
    *,
    user_id: str,
    trace_id: str,
    route: str,
    reason: str,
    rate_limited: bool = False,
    prompt: tuple[str | None, str | None] = (None, None),
    processing_time_ms: int = 0,
    arm: Arm | None = None,
) -> LogEntry:
    """A request that ended without a result: no workflow, no model, `reason` says why."""
    return LogEntry(
        request_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        user_id=user_id,
        trace_id=trace_id,
        prompt=prompt[0],
        prompt_sha256=prompt[1],
        route=route,
        classified_workflow=UNCLASSIFIED,
        confidence=0.0,
        processing_time_ms=processing_time_ms,
        used_fallback=False,
        cache_hit=False,
        rate_limited=rate_limited,
        intent_source=None,
        arm=arm,
        selected_model=None,
        fallback_models=[],
        estimated_cost=None,
        estimated_time=None,
        error_message=reason,
        outcome=reason,
    )


def prompt_columns(
    prompt: str, policy: LogPrompts, hash_key: bytes | None = None
) -> tuple[str | None, str | None]:
    """(prompt, prompt_sha256) as LOG_PROMPTS allows: both, the digest only, or neither.

    The digest is HMAC-SHA256 under `hash_key` when one is configured, else plain SHA-256.
    """
    if policy == "none":
        return None, None
    if hash_key:
        digest = hmac.new(hash_key, prompt.encode(), hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(prompt.encode()).hexdigest()
    return (prompt if policy == "full" else None), digest


INTENT_COLUMNS = (
    "request_id", "created_at", "user_id", "trace_id", "prompt", "prompt_sha256", "route",
    "classified_workflow", "confidence", "processing_time_ms", "used_fallback", "cache_hit",
    "circuit_breaker_state", "rate_limited", "intent_source", "arm", "outcome", "no_clear_intent",
)
MODEL_COLUMNS = (
    "request_id", "created_at", "user_id", "trace_id", "workflow_type", "selected_model",
    "fallback_models", "estimated_cost", "estimated_time", "success", "error_message", "arm",
)


def intent_record(e: LogEntry) -> tuple[object, ...]:
    return (
        e.request_id, e.created_at, e.user_id, e.trace_id, e.prompt, e.prompt_sha256, e.route,
        e.classified_workflow, e.confidence, e.processing_time_ms, e.used_fallback, e.cache_hit,
        e.circuit_breaker_state, e.rate_limited, e.intent_source, e.arm, e.outcome, e.no_clear_intent,
    )


def model_record(e: LogEntry) -> tuple[object, ...]:
    return (
        e.request_id, e.created_at, e.user_id, e.trace_id, e.classified_workflow, e.selected_model,
        # success: the generation's outcome, which the generation service knows and the gateway
        # does not (it only chose the model): NULL, as actual_cost is, until that service sets it.
        e.fallback_models, e.estimated_cost, e.estimated_time, None, e.error_message, e.arm,
    )
