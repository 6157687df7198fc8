"""What each stage's span says about the decision it made (attribute names are the API's)."""

from __future__ import annotations

from pipeline.state import RequestState

AttributeValue = str | bool | int | float


def stage_span_attributes(stage: str, state: RequestState, outcome: str) -> dict[str, AttributeValue]:
    """Attributes for the span of `stage`, read from the state it has just filled; `outcome`: ok,
    fallback (this stage's own: the request's `fallback_used` is every stage's), error (a
    PipelineError such as overload ended the request) or cancelled (the client left)."""
    fell_back = outcome == "fallback"
    attributes: dict[str, AttributeValue] = {"stage": stage, "outcome": outcome, "fallback_used": fell_back}
    if fell_back and state.last_fallback_reason is not None:
        # Why, where an SRE reads the trace: "the llm classifier failed (circuit_open); ..."
        attributes["fallback_reason"] = state.last_fallback_reason
    intent, selection = state.intent, state.selection
    if stage == "intent" and intent is not None:
        # `_value_`, the member's own attribute: `.value` is a Python-level property (~0.3 us).
        attributes["workflow_type"] = intent.workflow_type._value_
        attributes["confidence"] = intent.confidence
        attributes["intent_source"] = intent.source._value_
        attributes["cache_hit"] = state.cache_hit
        if state.arm is not None:
            attributes["arm"] = state.arm
        # The embedded classifier's tier: "minilm" explains an intent stage of milliseconds
        # (the transformer, and its queue) where "static" answers in a fraction of one, and
        # "static_busy" says the fast tier answered because MiniLM's queue was too long.
        if isinstance(tier := intent.metadata.get("tier"), str):
            attributes["classifier_tier"] = tier
        if state.coalesced_with is not None:
            # Waited for an identical request's classification: its LLM call is in that trace.
            attributes["coalesced_with"] = state.coalesced_with
    elif stage == "model" and selection is not None:
        attributes["model_id"] = selection.model_id
        attributes["provider"] = selection.provider
        attributes["estimated_cost"] = selection.estimated_cost
    elif stage == "prompt":
        attributes["enhancement_applied"] = state.enhancement_applied
    elif stage == "references" and state.reference_search is not None:
        attributes["reference_search"] = state.reference_search
        attributes["references"] = len(state.references)
    elif stage == "context" and state.context is not None:
        attributes["mentions"] = len(state.context.mentions)
    return attributes
