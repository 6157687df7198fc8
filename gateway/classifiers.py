"""Choosing the classifier the configuration asks for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.config import Settings
from pipeline.classifiers.rules import RulesClassifier
from pipeline.protocols import Classifier


@asynccontextmanager
async def open_classifier(settings: Settings) -> AsyncIterator[Classifier]:
    """The configured classifier, open for the app's lifetime (LLM clients hold connections)."""
    if settings.intent_classifier == "rules":
        yield RulesClassifier()
        return
    raise NotImplementedError(f"INTENT_CLASSIFIER={settings.intent_classifier} is not available yet")
