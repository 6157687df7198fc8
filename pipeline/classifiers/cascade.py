"""Pay for the LLM only when needed, and never fail because of it.

`CascadeClassifier` (INTENT_CLASSIFIER=cascade): a cheap first classifier answers; only
results under the confidence threshold go to the LLM. `FallbackClassifier`
(INTENT_CLASSIFIER=llm): the LLM answers everything. Both fall back llm -> local -> rules
and mark the answer with metadata["fallback_used"] (and "fallback_from": "llm"), which
the intent stage turns into the response's `fallback_used`.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from pipeline.classifiers.llm import LLMFailed
from pipeline.classifiers.rules import RulesClassifier
from pipeline.llm_usage import LLMUsage
from pipeline.protocols import Classifier
from pipeline.types import ClassifierInput, IntentClassification

log = logging.getLogger(__name__)


def confident(result: IntentClassification, threshold: float) -> bool:
    return result.confidence >= threshold and not result.low_confidence


def as_fallback(result: IntentClassification, reason: str) -> IntentClassification:
    # "fallback_used" also keeps the answer out of the intent cache (pipeline/cache.py).
    metadata: dict[str, Any] = {
        **result.metadata, "fallback_used": True, "fallback_from": "llm", "fallback_reason": reason
    }
    return msgspec.structs.replace(result, metadata=metadata)


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, LLMFailed) else type(exc).__name__


class FallbackClassifier:
    """The LLM for every prompt; on failure the local classifier, then the rules."""

    name = "llm"

    def __init__(
        self, llm: Classifier, *, usage: LLMUsage, fallbacks: tuple[Classifier, ...] = ()
    ) -> None:
        self.llm = llm
        self.usage = usage
        self.fallbacks = (*fallbacks, RulesClassifier())
        self.version = "+".join(c.version for c in (llm, *self.fallbacks))

    async def quick_answer(self, query: ClassifierInput) -> None:
        return None  # the LLM answers first

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        try:
            return await self.llm.classify(query)
        except Exception as exc:
            self.usage.fallbacks += 1
            return as_fallback(await _first_answer(self.fallbacks, query), _reason(exc))


class CascadeClassifier:
    """`first` answers; under `threshold` the LLM decides; if the LLM fails, `first` stands."""

    name = "cascade"

    def __init__(
        self, first: Classifier, llm: Classifier, *, threshold: float, usage: LLMUsage
    ) -> None:
        self.first = first
        self.llm = llm
        self.threshold = threshold
        self.usage = usage
        self.rules = RulesClassifier()
        self.version = f"{first.version}+{llm.version}@{threshold:g}"

    async def quick_answer(self, query: ClassifierInput) -> IntentClassification | None:
        try:
            local = await self.first.quick_answer(query)
        except Exception as exc:  # as in `classify`: its failure is not the request's
            log.warning("classifier %s failed: %r", self.first.name, exc)
            return None  # `classify` asks `first` again, then the rules
        if local is not None and confident(local, self.threshold):
            self.usage.cascade_local += 1
            return local
        return None  # `classify` asks `first` again, then the LLM

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        local = await _first_answer((self.first, self.rules), query)
        if confident(local, self.threshold):
            self.usage.cascade_local += 1
            return local
        self.usage.cascade_escalated += 1
        try:
            return await self.llm.classify(query)
        except Exception as exc:
            self.usage.fallbacks += 1
            return as_fallback(local, _reason(exc))


async def _first_answer(chain: tuple[Classifier, ...], query: ClassifierInput) -> IntentClassification:
    """The first classifier in `chain` that answers (the rules, last, always do)."""
    for classifier in chain[:-1]:
        try:
            return await classifier.classify(query)
        except Exception as exc:
            log.warning("classifier %s failed: %r", classifier.name, exc)
    return await chain[-1].classify(query)
