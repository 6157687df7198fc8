"""Choosing the classifier the configuration asks for."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager, closing
from typing import TYPE_CHECKING

from gateway.config import ConfigError, Settings
from gateway.llm import breaker_policy, llm_usage
from observability.spans import ClientSpans, no_client_spans
from pipeline.breaker import CircuitBreaker
from pipeline.classifiers.rules import RulesClassifier
from pipeline.llm_usage import LLMUsage
from pipeline.protocols import Classifier

if TYPE_CHECKING:
    from pipeline.classifiers.llm import LLMClassifier
    from pipeline.classifiers.local import LocalClassifier

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"


@asynccontextmanager
async def open_classifier(
    settings: Settings,
    *,
    breaker: CircuitBreaker | None = None,
    usage: LLMUsage | None = None,
    spans: ClientSpans = no_client_spans,
    runs: Counter[str] | None = None,
) -> AsyncIterator[Classifier]:
    """The configured classifier, open for the app's lifetime (LLM clients hold connections).

    The app passes its shared breaker and usage counters, and `runs` for the embedded
    classifier to count into; the CLI gets fresh ones.
    """
    if settings.intent_classifier == "rules":
        yield RulesClassifier()
        return
    if settings.intent_classifier == "local":
        with closing(local_classifier(settings, runs)) as local:
            yield local
        return
    if settings.intent_classifier in ("llm", "cascade"):
        # Imported here: the SDK (and pydantic) cost start-up time only when used.
        from pipeline.classifiers.cascade import CascadeClassifier, FallbackClassifier

        usage = usage or llm_usage(settings)
        breaker = breaker or CircuitBreaker("llm", breaker_policy(settings))
        with ExitStack() as fallbacks:
            embedded_ones = tuple(fallbacks.enter_context(closing(c)) for c in embedded(settings, runs))
            async with open_llm(settings, breaker, usage, spans=spans) as llm:
                if settings.intent_classifier == "llm":
                    yield FallbackClassifier(llm, usage=usage, fallbacks=embedded_ones)
                else:
                    first, *_ = (*embedded_ones, RulesClassifier())
                    threshold = settings.local_confidence_threshold
                    yield CascadeClassifier(first, llm, threshold=threshold, usage=usage)
        return
    raise ConfigError(f"unknown INTENT_CLASSIFIER={settings.intent_classifier!r}")


def embedded(settings: Settings, runs: Counter[str] | None = None) -> tuple[LocalClassifier, ...]:
    """The embedded classifier the LLM path falls back to, before the rules.

    Without its model package the LLM path still starts (on the rules), loudly: only
    INTENT_CLASSIFIER=local makes the missing model fatal.
    """
    try:
        return (local_classifier(settings, runs),)
    except FileNotFoundError as exc:
        log.error("embedded classifier unavailable, LLM path falls back to the rules: %s", exc)
        return ()


def local_classifier(settings: Settings, runs: Counter[str] | None = None) -> LocalClassifier:
    """The embedded classifier; its artifact is built by `make install`, else at first start."""
    # Imported here: numpy and the tokenizer cost start-up time only when used.
    from pipeline.classifiers.local import LocalClassifier

    return LocalClassifier.load(
        build_if_missing=True,
        low_confidence_below=settings.local_confidence_threshold,
        escalate_below=settings.local_escalate_below,
        runtime=settings.local_runtime,
        runs=runs,
        escalation_budget=settings.local_escalation_budget_ms / 1000,
    )


@asynccontextmanager
async def open_llm(
    settings: Settings, breaker: CircuitBreaker, usage: LLMUsage, *, spans: ClientSpans = no_client_spans
) -> AsyncIterator[LLMClassifier]:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    from gateway.openai_chat import OpenAIChat
    from pipeline.classifiers.llm import LLMClassifier

    # The SDK's aiohttp transport: one HTTP stack for the gateway, and aioresponses mocks it.
    # max_retries=0: retries, backoff and the deadline are the classifier's own.
    async with AsyncOpenAI(
        api_key=settings.openai_api_key or "not-needed",  # local servers ignore the key
        base_url=settings.openai_base_url or OPENAI_BASE_URL,
        max_retries=0,
        timeout=settings.classification_timeout,
        http_client=DefaultAioHttpClient(),
    ) as client:
        yield LLMClassifier(
            OpenAIChat(client, settings.openai_model),
            breaker=breaker,
            usage=usage,
            timeout=settings.classification_timeout,
            backoff_base=settings.llm_backoff_base,
            max_tokens=settings.llm_max_tokens,
            spans=spans,
        )
