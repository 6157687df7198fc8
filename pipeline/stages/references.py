"""Stage 5 (only when a search provider is configured): reference images for a named look.

For reference_styling prompts that name a person or an event, search images of that look
and add the best few to the result's references, after the user's own @tag references.
"""

from __future__ import annotations

from pipeline.events import ReferencesEvent
from pipeline.search.lookup import LookupResult, ReferenceLookup
from pipeline.search.query import search_query
from pipeline.state import RequestState
from pipeline.types import WorkflowType


class ReferencesStage:
    name = "references"

    def __init__(self, lookup: ReferenceLookup) -> None:
        self.lookup = lookup

    async def run(self, state: RequestState) -> ReferencesEvent:
        intent = state.intent
        assert intent is not None
        if intent.workflow_type is not WorkflowType.REFERENCE_STYLING:
            return self._skipped(state, "not a reference_styling request")
        query = search_query(state.request.prompt, intent)
        if query is None:
            return self._skipped(state, "no person, event or look named")
        result = await self.lookup.find(query)
        state.references.extend(result.references)
        return self._event(state, result, query)

    def fallback(self, state: RequestState) -> ReferencesEvent:
        return self._event(state, LookupResult(outcome="failed", reason="reference search failed"))

    def _skipped(self, state: RequestState, reason: str) -> ReferencesEvent:
        return self._event(state, LookupResult(outcome="skipped", reason=reason))

    def _event(self, state: RequestState, result: LookupResult, query: str | None = None) -> ReferencesEvent:
        state.reference_search = result.summary
        return ReferencesEvent(
            outcome=result.outcome,
            summary=result.summary,
            count=len(result.references),
            query=query,
            provider=self.lookup.provider.name,
            reason=result.reason,
            cache_hit=result.cache_hit,
            references=result.references,
        )
