"""Quick, rule-based prompt enhancement: no model call, so it costs microseconds."""

from __future__ import annotations

import re

from pipeline.types import IMAGE_INPUT_WORKFLOWS, Format, Preferences, Style, WorkflowType

W = WorkflowType

# Prompts shorter than this many words get workflow-specific detail appended.
SHORT_PROMPT_WORDS = 8
# Scripts written without spaces between words: kana, CJK ideographs, Thai, Lao, Myanmar.
UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f]")
# What ends a sentence: kept, and the detail follows after a space (", " after "!" read badly,
# and stripping a period cut "Jr." and "...").
_SENTENCE_ENDS = (".", "!", "?", "\u2026", "\u3002", "\uff01", "\uff1f")


def is_short(prompt: str) -> bool:
    """Short enough to get its workflow's detail appended (the classifiers' enhancement_needed)."""
    return word_count(prompt) < SHORT_PROMPT_WORDS


def word_count(text: str) -> int:
    """Words as a reader counts them: split on spaces, and in scripts written without them
    (Japanese, Chinese, Thai) about one word per two characters. By spaces alone a 50-character
    Japanese sentence was one word, a "short prompt" that got English filler appended."""
    tokens = text.split()
    if text.isascii():  # most prompts
        return len(tokens)
    return sum(max(1, len(UNSPACED.findall(token)) // 2) for token in tokens)

SUFFIXES: dict[WorkflowType, str] = {
    W.IMAGE_GENERATION: "high quality, detailed, professional",
    W.HAIR_STYLING: "professional hair styling, natural hairline, high detail",
    W.REFERENCE_STYLING: "high quality styling, professional photography",
    W.IMAGE_EDITING: "seamless edit, consistent lighting, high quality",
    W.IMAGE_ENHANCEMENT: "sharp details, natural colors, high resolution",
    W.STYLE_TRANSFER: "faithful composition, strong artistic style",
    W.VIDEO_GENERATION: "cinematic, smooth motion, synchronized audio",
    W.IMAGE_TO_VIDEO: "smooth natural motion, stable subject",
    W.TEXT_TO_VIDEO: "cinematic, smooth motion, detailed scene",
}


# The user's `style` and `format` preferences, as a prompt says them.
STYLES: dict[Style, str] = {
    "photorealistic": "photorealistic", "cinematic": "cinematic", "anime": "anime style",
    "cartoon": "cartoon style", "watercolor": "watercolor painting", "oil_painting": "oil painting",
    "sketch": "pencil sketch", "digital_art": "digital art", "3d_render": "3D render",
    "vintage": "vintage look", "minimalist": "minimalist style",
}
FORMATS: dict[Format, str] = {
    "square": "square format", "portrait": "portrait orientation", "landscape": "landscape orientation",
    "1:1": "1:1 aspect ratio", "4:3": "4:3 aspect ratio", "3:4": "3:4 aspect ratio",
    "16:9": "16:9 aspect ratio", "9:16": "9:16 aspect ratio",
}
# A prompt that names a medium or a shape of its own means it: the preference (a default the user
# set once) does not contradict it ("a watercolor painting of a fox" got ", photorealistic";
# "a vertical phone wallpaper" got ", 16:9 aspect ratio"). Words that also describe things ("a
# charcoal gray kitten", "acrylic nails", "a photo album", "vertical stripes", "a widescreen TV")
# name a medium or shape only before what is drawn or framed: "charcoal drawing", "vertical poster".
_RENDERED = (r"(?:of|style|painting|drawing|illustration|art|artwork|portrait|render|rendering|look|image|"
             r"picture|print|poster|photo|photograph|shot|sketch)")
_NAMES_A_MEDIUM = re.compile(
    r"\b(?:photo-?realistic|hyper-?realistic|anime|manga|watercolou?r|oil[- ]paint(?:ing|ed)|oil on canvas|"
    r"gouache|sketch(?:ed|es)?|line art|digital (?:art|painting|illustration)|pixel art|low[- ]poly|cgi|"
    r"claymation|stop[- ]motion|impressionist|cubist|surrealist|ukiyo-e|pop art|in the style of|"
    r"[\w-]+[- ]style|photo(?:graph)?s?(?! (?:album|booth|frame|studio|shoot|editor|app|gallery|wall))|"
    r"(?:cartoons?|comics?|charcoal|acrylic|pencil|ink|crayon|pastel|vector|polaroid|3d|realistic|cinematic|"
    rf"art deco|art nouveau|noir|retro|vintage) {_RENDERED})\b"
    # Other languages' words for a medium, where no space marks a word's end: a watercolor, an
    # oil painting, ink wash, a photo, a sketch in Japanese and Chinese; Spanish, Portuguese,
    # Italian, French, German.
    r"|\u6c34\u5f69|\u6cb9\u7d75|\u6cb9\u753b|\u6c34\u58a8|\u5199\u771f|\u7167\u7247|\u7d20\u63cf"
    r"|\u30b9\u30b1\u30c3\u30c1"
    r"|\b(?:acuarela|aquarela|acquerello|aquarelle|aquarell|\u00f3leo|olio|\u00f6lgem\u00e4lde"
    r"|peinture \u00e0 l'huile|fotograf\u00eda|fotografia|photographie|dibujo|dessin|zeichnung)\b"
)
# Words for a painting or drawing in general: the preferred one refines them ("a painting of",
# + oil_painting), unless it is a photograph or a render, which would contradict them.
_NAMES_ART = re.compile(r"\b(?:painting|drawing|illustration|artwork|cartoon|lego|pixar)")
_NOT_ART: frozenset[Style] = frozenset({"photorealistic", "3d_render"})
_NAMES_A_SHAPE = re.compile(
    r"\b(?:(?:vertical|horizontal|square|tall|widescreen) (?:phone )?"
    r"(?:format|orientation|mode|aspect|image|picture|photo|poster|wallpaper|video|clip|shot|frame|"
    r"composition|layout|banner|version|crop|story|reel|thumbnail|cover)|"
    r"(?:portrait|landscape|wide) (?:format|orientation|mode|aspect|poster|wallpaper|banner|version|crop)|"
    r"in (?:portrait|landscape)|panoram(?:a|ic)|aspect ratio|\d{3,4} ?x ?\d{3,4})\b"
    r"|(?<![\d:.])(?:1[:x]1|4[:x]3|3[:x]4|16[:x]9|9[:x]16|3[:x]2|2[:x]3|21[:x]9|4[:x]5|5[:x]4)(?![\d:])"
    # Vertical and horizontal in Chinese and Japanese.
    r"|\u7ad6\u7248|\u7ad6\u5c4f|\u6a2a\u7248|\u6a2a\u5c4f|\u7e26\u9577|\u7e26\u578b|\u6a2a\u9577"
)  # a ratio as one says it, not any "3:16" (a verse) or "10:10" (a clock's hands); "a wide shot" and
# "a landscape photo" are a framing and a subject, not an aspect ratio
# Looks that go with any medium ("a photo of ..., cinematic"): added unless the prompt says them.
_LOOKS: frozenset[Style] = frozenset({"cinematic", "vintage", "minimalist"})

# A new picture or clip made from words takes the user's style and format. The other workflows
# start from an image, which already has both (the look a style transfer aims at is a style too).
FROM_TEXT = frozenset(WorkflowType) - IMAGE_INPUT_WORKFLOWS
STYLED = FROM_TEXT | {W.STYLE_TRANSFER}


def enhance(prompt: str, workflow: WorkflowType, preferences: Preferences) -> str:
    """Append workflow detail to short prompts (longer ones already say what they want), and the
    preferred style and format where the workflow makes something new and the prompt does not
    say them already."""
    detail = SUFFIXES[workflow] if is_short(prompt) else ""
    additions = [detail] if detail else []
    style = STYLES[preferences.style] if preferences.style is not None and workflow in STYLED else ""
    shape = FORMATS[preferences.format] if preferences.format is not None and workflow in FROM_TEXT else ""
    if style or shape:
        said = prompt.lower()
        # A look is said or not; a medium is one of several, and the prompt's own wins.
        if preferences.style in _LOOKS:
            named = style.split()[0] in said
        else:
            named = _names_a_medium(said, workflow) or (
                preferences.style in _NOT_ART and _NAMES_ART.search(said) is not None)
        if style and not named and style.lower() not in f"{said} {detail}":
            additions.insert(0, style)
        if shape and not _NAMES_A_SHAPE.search(said):
            additions.append(shape)
    if not additions:
        return prompt
    # A dangling separator (a full-width comma too, or a dash) is the list's to say: it doubled.
    base = prompt.rstrip().rstrip(",;:-\u2013\u2014\uff0c\u3001\uff1b\uff1a").rstrip()
    return f"{base}{' ' if base.endswith(_SENTENCE_ENDS) else ', '}{', '.join(additions)}"


def _names_a_medium(prompt: str, workflow: WorkflowType) -> bool:
    """In a style transfer "this photo" is the user's image, not the look asked for."""
    if workflow is W.STYLE_TRANSFER:
        if re.search(r"\blooks? like\b", prompt):  # "make it look like a Pixar movie": its own target
            return True
        prompt = re.sub(r"\b(?:this|my|the) (?:photo|photograph|picture|image|pic)s?\b", "", prompt)
    return _NAMES_A_MEDIUM.search(prompt) is not None
