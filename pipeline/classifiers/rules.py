"""The app's existing keyword rules, kept as the last fallback and the A/B baseline.

Two known bugs of the original are fixed: a working image no longer hides every workflow
except editing and enhancement, and the match for the most specific workflow wins instead of
the first one in dictionary order ("animate this into a video" is image_to_video, not
text_to_video; "change my hair" is hair_styling, not image_editing).
"""

from __future__ import annotations

import re

from pipeline.enhance import is_short
from pipeline.search.query import local_query
from pipeline.types import ClassifierInput, IntentClassification, IntentSource, WorkflowType

W = WorkflowType

# People and events whose look needs reference images found by a web search.
NAMED_LOOKS = (
    "grammy", "grammys", "met gala", "taylor swift", "zendaya", "beyonce", "rihanna",
    "kim kardashian", "lady gaga", "harry styles", "billie eilish", "ariana grande", "dua lipa",
)

KEYWORDS: dict[WorkflowType, tuple[str, ...]] = {
    W.VIDEO_GENERATION: ("video with audio", "video with sound", "music video", "cinematic"),
    W.IMAGE_TO_VIDEO: ("animate", "bring to life", "make this move"),
    W.TEXT_TO_VIDEO: ("video", "movie", "clip", "scene", "footage"),
    W.HAIR_STYLING: ("hair", "haircut", "hairstyle", "blonde", "brunette"),
    W.REFERENCE_STYLING: (
        "celebrity", "put @", "try on", "wear this", "outfit", "dress up", *NAMED_LOOKS,
    ),
    W.IMAGE_EDITING: ("edit", "change", "modify", "adjust"),
    W.IMAGE_ENHANCEMENT: ("enhance", "improve", "upscale", "sharpen"),
    W.STYLE_TRANSFER: ("style", "artistic", "painting", "sketch"),
}

# Most specific first: a narrow workflow's keyword beats a generic one ("video", "change").
PRIORITY: tuple[WorkflowType, ...] = (
    W.VIDEO_GENERATION, W.IMAGE_TO_VIDEO, W.HAIR_STYLING, W.REFERENCE_STYLING,
    W.IMAGE_ENHANCEMENT, W.STYLE_TRANSFER, W.TEXT_TO_VIDEO, W.IMAGE_EDITING,
)



def _pattern(keyword: str) -> re.Pattern[str]:
    # Word boundaries so "clip" does not match "eclipse"; "put @" ends in a non-word char.
    tail = r"\b" if keyword[-1].isalnum() else ""
    return re.compile(r"\b" + re.escape(keyword) + tail)


_COMPILED: tuple[tuple[WorkflowType, str, re.Pattern[str]], ...] = tuple(
    (workflow, keyword, _pattern(keyword))
    for workflow in PRIORITY
    for keyword in KEYWORDS[workflow]
)


_LOOK_PATTERNS = tuple((name, _pattern(name)) for name in NAMED_LOOKS)


def named_looks(prompt: str) -> list[str]:
    """Celebrity and event names in the prompt whose look a web search can find."""
    text = prompt.lower()
    return [name for name, pattern in _LOOK_PATTERNS if pattern.search(text)]


def look_search_query(prompt: str, looks: list[str]) -> str:
    """The query for named looks: the one the references stage will search (person, event, year,
    garment), so what the intent event shows is what is searched for."""
    return local_query(prompt) or " ".join(looks) + " look"


def default_workflow(has_image: bool) -> WorkflowType:
    """The safe answer when nothing in the prompt names a workflow: edit the image in hand, or
    make a new one."""
    return W.IMAGE_EDITING if has_image else W.IMAGE_GENERATION


class RulesClassifier:
    name = "rules"
    version = "rules-2"

    async def quick_answer(self, query: ClassifierInput) -> IntentClassification:
        return self.classify_sync(query)

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        return self.classify_sync(query)

    def classify_sync(self, query: ClassifierInput) -> IntentClassification:
        text = query.prompt.lower()
        has_image = query.has_image
        matches = [(kw, wf) for wf, kw, pattern in _COMPILED if pattern.search(text)]
        enhancement_needed = is_short(query.prompt)

        if not matches:
            return IntentClassification(
                workflow_type=default_workflow(has_image),
                confidence=0.4,
                reasoning="no keyword matched; default for "
                + ("a request with a working image" if has_image else "a text-only request"),
                source=IntentSource.RULES,
                enhancement_needed=enhancement_needed,
                metadata={"low_confidence": True},  # a guess: the frontend may ask the user
            )

        # _COMPILED is in PRIORITY order, so the first match is the most specific workflow.
        keyword, workflow = matches[0]
        if workflow is W.TEXT_TO_VIDEO and has_image:
            workflow = W.IMAGE_TO_VIDEO  # a video request about the image in hand
        searchable = [kw for kw, _ in matches if kw in NAMED_LOOKS]
        requires_search = workflow is W.REFERENCE_STYLING and bool(searchable)
        return IntentClassification(
            workflow_type=workflow,
            confidence=0.6,
            reasoning=f"keyword '{keyword}' matched {workflow.value}",
            source=IntentSource.RULES,
            requires_web_search=requires_search,
            web_search_query=look_search_query(query.prompt, searchable) if requires_search else None,
            enhancement_needed=enhancement_needed,
        )
