"""What the LLM path costs and how often it runs: calls, tokens, spend, cascade share."""

from __future__ import annotations

from collections import Counter

import msgspec


class Prices(msgspec.Struct, frozen=True, kw_only=True):
    """US dollars per million tokens (defaults: gpt-4o-mini's list price)."""

    input_per_million: float = 0.15
    output_per_million: float = 0.60

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1_000_000


class LLMUsage:
    """Counters of one instance; the classifier and the cascade update them."""

    def __init__(self, prices: Prices | None = None) -> None:
        self.prices = prices or Prices()
        self.calls = 0  # upstream requests actually sent, retries included
        self.retries = 0
        self.answers = 0  # classifications the LLM decided
        self.failures: Counter[str] = Counter()  # failed classifications, by reason
        self.short_circuited = 0  # classifications refused by the open breaker
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.spend_usd = 0.0
        self.cascade_local = 0  # cascade requests answered without the LLM
        self.cascade_escalated = 0
        self.fallbacks = 0  # LLM failed; local or rules answered instead

    def record_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.spend_usd += self.prices.cost(prompt_tokens, completion_tokens)

    def snapshot(self) -> dict[str, object]:
        cascade_total = self.cascade_local + self.cascade_escalated
        return {
            "calls": self.calls,
            "retries": self.retries,
            "answers": self.answers,
            "failures": sum(self.failures.values()),
            "failures_by_reason": dict(self.failures),
            "short_circuited": self.short_circuited,
            "fallbacks": self.fallbacks,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "estimated_spend_usd": round(self.spend_usd, 8),
            "cascade": {
                "kept_local": self.cascade_local,
                "escalated": self.cascade_escalated,
                "kept_local_share": self.cascade_local / cascade_total if cascade_total else 0.0,
            },
        }
