"""Stage 4: the prompt to send: @tags resolved, short prompts enriched."""

from __future__ import annotations

from pipeline.enhance import enhance
from pipeline.events import PromptEvent
from pipeline.references import ReferenceStore
from pipeline.state import RequestState
from pipeline.types import Reference


class PromptStage:
    name = "prompt"

    def __init__(self, references: ReferenceStore) -> None:
        self.references = references

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
                              else enhance(request.prompt, intent.workflow_type, request.preferences))
        state.enhancement_applied = state.final_prompt != request.prompt
        return self._event(state)

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
