"""Stage 2: which of the nine workflows the user wants."""

from __future__ import annotations

from pipeline.cache import IntentCache
from pipeline.classifiers.rules import RulesClassifier
from pipeline.events import IntentEvent
from pipeline.protocols import Classifier
from pipeline.rollout import Rollout
from pipeline.slots import ClassificationSlots
from pipeline.state import RequestState
from pipeline.types import IMAGE_INPUT_WORKFLOWS, ClassifierInput, IntentClassification


class IntentStage:
    name = "intent"

    def __init__(
        self,
        *,
        ai: Classifier,
        slots: ClassificationSlots,
        rollout: Rollout,
        rules: RulesClassifier | None = None,
        cache: IntentCache | None = None,
    ) -> None:
        self.ai = ai
        self.rules = rules or RulesClassifier()
        self.slots = slots
        self.rollout = rollout
        self.cache = cache

    async def run(self, state: RequestState) -> IntentEvent:
        request, context = state.request, state.context
        assert context is not None
        state.arm = (self.rollout.arm(request.user_id, everyone=request.ignore_rollout)
                     if request.use_ai_classification else "existing")
        classifier: Classifier = self.ai if state.arm == "ai" else self.rules
        query = context.classifier_input(request.prompt)
        # The "existing" arm is the rules baseline: microseconds to compute, so never cached.
        if state.arm == "ai" and self.cache is not None:
            state.intent, state.cache_hit = await self.cache.get_or_classify(
                classifier, query, lambda: self._classify(classifier, query), state.joined
            )
        else:
            state.intent = await classifier.quick_answer(query) or await self._classify(classifier, query)
        # The LLM failed and a fallback classifier answered: still a 200, but say so.
        metadata = state.intent.metadata
        if metadata.get("fallback_used"):
            failed, why = metadata.get("fallback_from", "llm"), metadata.get("fallback_reason")
            answered = state.intent.source._value_
            state.fall_back(f"the {failed} classifier failed ({why}); the {answered} classifier answered")
        return self._event(state)

    async def _classify(self, classifier: Classifier, query: ClassifierInput) -> IntentClassification:
        # Only classifications that wait (the MiniLM thread, the LLM) take a slot: not cache
        # hits, coalesced waiters, or answers the classifier gave at once (`quick_answer`).
        # Fast answers that took one queued behind escalations holding all eight, each under
        # a timeout: -15% throughput on cache misses. No yield to the loop inside the slot
        # before the classifier runs: that let concurrent misses fill the slots the same way.
        async with self.slots.hold():
            return await classifier.classify(query)

    def fallback(self, state: RequestState) -> IntentEvent:
        # The keyword rules never fail and need no slot: the safe default.
        context = state.context
        assert context is not None
        state.intent = self.rules.classify_sync(context.classifier_input(state.request.prompt))
        state.arm = state.arm or "existing"  # failed before choosing: the rules answered
        return self._event(state)

    @staticmethod
    def _event(state: RequestState) -> IntentEvent:
        intent, arm, context = state.intent, state.arm, state.context
        assert intent is not None and arm is not None and context is not None
        return IntentEvent(
            workflow_type=intent.workflow_type,
            confidence=intent.confidence,
            source=intent.source,
            reasoning=intent.reasoning,
            cache_hit=state.cache_hit,
            arm=arm,
            requires_web_search=intent.requires_web_search,
            web_search_query=intent.web_search_query,
            low_confidence=intent.low_confidence,
            no_clear_intent=intent.no_clear_intent,
            image_missing=intent.workflow_type in IMAGE_INPUT_WORKFLOWS and not context.may_bring_an_image(),
        )
