"""The two small protocols the pipeline is built from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pipeline.events import StageEvent
    from pipeline.state import RequestState
    from pipeline.types import ClassifierInput, IntentClassification


class Classifier(Protocol):
    name: str  # "rules" | "local" | "llm" | "cascade"
    version: str  # part of cache keys: change it when the classifier's answers can change

    async def quick_answer(self, query: ClassifierInput) -> IntentClassification | None:
        """The answer if it needs no thread and no network, else None.

        Such an answer cannot queue, so it takes no classification slot: only `classify`,
        called when this returns None, does. It may take one turn of the event loop: the
        embedded classifier computes the quick answers asked for in one turn together.
        """
        ...

    async def classify(self, query: ClassifierInput) -> IntentClassification: ...


class Stage(Protocol):
    """One job in the pipeline; its result is the payload of the SSE event named `name`."""

    name: str

    async def run(self, state: RequestState) -> StageEvent: ...

    def fallback(self, state: RequestState) -> StageEvent:
        """Fill `state` with a safe default after `run` failed, and describe it."""
        ...
