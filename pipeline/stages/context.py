"""Stage 1: who is asking, with which images and preferences, mentioning whom."""

from __future__ import annotations

from pipeline.enhance import word_count
from pipeline.events import ContextEvent
from pipeline.references import find_mentions
from pipeline.state import Context, RequestState


class ContextStage:
    name = "context"

    async def run(self, state: RequestState) -> ContextEvent:
        request = state.request
        images = (request.working_image_url,) if request.working_image_url else ()
        state.context = Context(
            user_id=request.user_id,
            working_images=images,
            uploaded_images=request.uploaded_image_urls,
            mentions=find_mentions(request.prompt),
        )
        return self._event(state)

    def fallback(self, state: RequestState) -> ContextEvent:
        request = state.request
        state.context = Context(
            user_id=request.user_id, working_images=(), uploaded_images=(), mentions=()
        )
        return self._event(state)

    @staticmethod
    def _event(state: RequestState) -> ContextEvent:
        context, request = state.context, state.request
        assert context is not None
        return ContextEvent(
            user_id=context.user_id,
            working_images=list(context.working_images),
            uploaded_images=list(context.uploaded_images),
            mentions=list(context.mentions),
            preferences=request.preferences,
            word_count=word_count(request.prompt),
        )
