"""Stage 4: the prompt to send: @tags resolved, short prompts enriched."""

from __future__ import annotations

from pipeline.enhance import enhance
from pipeline.events import PromptEvent
from pipeline.references import ReferenceStore
from pipeline.state import RequestState
from pipeline.types import Preferences, Reference, WorkflowType

# Enhanced prompts kept, by what `enhance` reads: a repeated prompt (a cache hit's usual company)
# skips the enhancer's word checks (~10 us a short prompt, ~1 ms at 2,000 characters). Up to
# ~10 MB of prompts; all are dropped at the bound (a miss costs only the checks again).
ENHANCED_KEPT = 4096


class PromptStage:
    name = "prompt"

    def __init__(self, references: ReferenceStore) -> None:
        self.references = references
        self._enhanced: dict[str, str] = {}

    async def run(self, state: RequestState) -> PromptEvent:
        request, context, intent = state.request, state.context, state.intent
        assert context is not None and intent is not None
        known = await self.references.resolve(request.user_id, context.mentions) if context.mentions else {}
        state.references.extend(
            Reference(kind="user_tag", tag=tag, image_url=url) for tag, url in known.items()
        )
        state.unknown_tags = [tag for tag in context.mentions if tag not in known]
        # A prompt that asks for nothing ("hi") has nothing to enrich: the default workflow's
        # detail words would only dress it up as a request.
        state.final_prompt = (request.prompt if intent.no_clear_intent
                              else self._enhance(request.prompt, intent.workflow_type, request.preferences))
        state.enhancement_applied = state.final_prompt != request.prompt
        return self._event(state)

    def _enhance(self, prompt: str, workflow: WorkflowType, preferences: Preferences) -> str:
        # What enhance reads (not quality), as one string: a tuple holding an enum stays tracked by
        # the garbage collector, and thousands of them cost every miss ~1% in collections.
        key = f"{workflow._value_}|{preferences.style}|{preferences.format}|{prompt}"
        enhanced = self._enhanced.get(key)
        if enhanced is None:
            if len(self._enhanced) >= ENHANCED_KEPT:
                self._enhanced.clear()
            enhanced = self._enhanced[key] = enhance(prompt, workflow, preferences)
        return enhanced

    def fallback(self, state: RequestState) -> PromptEvent:
        state.final_prompt = state.request.prompt
        state.enhancement_applied = False
        # The lookup failed or never ran: the answer must not say every @tag was found.
        mentions = state.context.mentions if state.context is not None else ()
        resolved = {ref.tag for ref in state.references if ref.kind == "user_tag"}
        state.unknown_tags = [tag for tag in mentions if tag not in resolved]
        return self._event(state)

    @staticmethod
    def _event(state: RequestState) -> PromptEvent:
        assert state.final_prompt is not None
        return PromptEvent(
            final_prompt=state.final_prompt,
            enhancement_applied=state.enhancement_applied,
            references=state.references,
            unknown_tags=state.unknown_tags,
        )
