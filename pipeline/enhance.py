"""Quick, rule-based prompt enhancement: no model call, so it costs microseconds."""

from __future__ import annotations

import re
import unicodedata

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


def _any(words: str) -> re.Pattern[str]:
    """Any of these words or phrases (a regex alternation), as whole words of a lower-cased prompt."""
    return re.compile(rf"\b(?:{words})\b")


class Detail:
    """One phrase of a workflow's detail, left out where the prompt says it already (its words, give
    or take an ending), takes it back ("no music": one of `denied_by`, by default the phrase's last
    word, the thing itself: "no hair clips" takes back no "hair styling") or says its opposite
    (`unless`, read in what the prompt does not take back: "sharp, not blurry" keeps "sharp details";
    nor is taking back the opposite taking back the detail: "not low quality")."""

    __slots__ = ("denied_by", "text", "unless", "words")

    def __init__(
        self, text: str, unless: re.Pattern[str] | None = None, denied_by: tuple[str, ...] = ()
    ) -> None:
        self.text = text
        self.unless = unless
        self.words = tuple(text.lower().split())
        self.denied_by = denied_by or self.words[-1:]


# What says the opposite of a detail, by kind.
_LOW_FI = (r"low[- ]?(?:res|resolution|quality|poly|fi)|lo-?fi|\d+[- ]?bit|pixel(?:ated)?|ms paint|"
           r"jpe?g artifacts|(?:bad|poor|worst) quality")
_SIMPLE = (r"simple|simplistic|minimal(?:ist|istic)?|plain|flat|basic|icon|emoji|doodle|stick figure|"
           r"line art|outline|silhouette|sketchy|rough|" + _LOW_FI)
_UNSTEADY = (r"shak(?:e|y|ing)|handheld|jerky|choppy|glitch(?:y|ing)?|stop[- ]motion|time-?lapse|hyperlapse|"
             r"strob(?:e|ing)|frantic|chaotic|fast|quick(?:ly)?|rapid(?:ly)?|wild(?:ly)?|crazy|spin(?:s|ning)?|"
             r"earthquake|explod(?:e|es|ing)|explosion")
_DEFORMING = (r"spin(?:s|ning)?|morph\w*|transform\w*|melt\w*|explod\w*|explosion|shatter\w*|disintegrat\w*|"
              r"shak(?:e|es|ing)|earthquake|glitch\w*|becom\w*|turns? into|turning into|dissolv\w*|bloom\w*|"
              r"grow\w*|evolv\w*|ag(?:e|es|ing) into")
_COLOR_WORK = (r"black and white|b ?& ?w|b/w|monochrome|gr[ae]yscale|sepia|dark(?:er|en)?|mood(?:y|ier)|"
               r"vibrant|(?:de)?saturat\w*|warm(?:er)?|cool(?:er)?|tint\w*|tone[sd]?|filter|vintage|film|"
               r"grade|grading|colou?r(?:s|ed|ize|ise)?|teal|neon|pastel|faded|retro")
_SOFT = r"blur\w*|soft(?:er|en)?|dream\w*|haz[ey]|grain\w*|bokeh|glow\w*|out of focus"
_LIGHTING = (r"light\w*|lit|relight|dark(?:er|en)?|bright(?:er|en)?|shadows?|sunset|night|neon|glow\w*|"
             r"golden hour")
_NO_HAIR = r"bald\w*|shav(?:e|ed|ing)|hairless|remove (?:\w+ )?hair|unprofessional|bedhead"
_DRAWN = r"cartoon\w*|anime|manga|drawing|painting|illustration|sketch\w*|watercolou?r|3d|pixar|lego|comic\w*"
_HOMEMADE = (r"documentary|amateur|found footage|vlogs?|vhs|home video|phone footage|"
             r"(?:i?phone|selfie) (?:video|footage|clip)|security cam(?:era)?|cctv|webcam|dash ?cam|gopro|"
             r"screen recording|handheld|" + _LOW_FI)
_UNCINEMATIC = _any(_HOMEMADE)
# Silence asked for outright (negated words are the other way: "no music"); then Chinese and
# Japanese "mute", "no sound", "no music".
_SILENT = re.compile(r"\b(?:mut(?:e|ed)|silent(?:ly)?|silence|stumm|voiceless|audio-free|"
                     r"(?:sound|music|audio) off)\b"
                     r"|\u9759\u97f3|\u65e0\u58f0|\u6ca1\u6709\u58f0\u97f3|\u97f3\u697d\u306a\u3057|\u7121\u97f3")
# Words for sound: "no music" and "sin sonido" take back "synchronized audio".
_AUDIO = ("music", "sound", "sounds", "audio", "soundtrack", "voice", "voices", "dialogue", "sfx", "noise",
          "musica", "musique", "sonido", "som", "suono", "musik",
          "\u043c\u0443\u0437\u044b\u043a\u0438", "\u0437\u0432\u0443\u043a\u0430")  # Russian

SUFFIXES: dict[WorkflowType, tuple[Detail, ...]] = {
    W.IMAGE_GENERATION: (
        Detail("high quality", _any(_LOW_FI)),
        Detail("detailed", _any(_SIMPLE)),
        Detail("professional", _any(r"amateur\w*|child(?:ish|like|'s drawing)|kids?'? drawing|crude|doodle|"
                                    r"ms paint|meme|ugly")),
    ),
    W.HAIR_STYLING: (
        Detail("professional hair styling", _any(_NO_HAIR)),
        Detail("natural hairline", _any(_NO_HAIR + "|receding")),
        Detail("high detail"),
    ),
    W.REFERENCE_STYLING: (
        Detail("high quality styling"),
        Detail("professional photography", _any(_DRAWN)),
    ),
    W.IMAGE_EDITING: (
        Detail("seamless edit"),
        Detail("consistent lighting", _any(_LIGHTING)),
        Detail("high quality", _any(_LOW_FI)),
    ),
    W.IMAGE_ENHANCEMENT: (
        Detail("sharp details", _any(_SOFT)),
        Detail("natural colors", _any(_COLOR_WORK), denied_by=("colors", "colours", "color", "colour")),
        Detail("high resolution", _any(_LOW_FI)),
    ),
    W.STYLE_TRANSFER: (
        Detail("faithful composition", _any(r"recompos\w*|rearrang\w*|zoom(?:ed)? out|expand\w*|"
                                            r"change the composition")),
        Detail("strong artistic style", _any(r"subtle\w*|slight(?:ly)?|light touch|a (?:bit|little)|hint of|"
                                             r"gentl[ey]|mild(?:ly)?|soft(?:ly)?")),
    ),
    W.VIDEO_GENERATION: (
        Detail("cinematic", _UNCINEMATIC),
        Detail("smooth motion", _any(_UNSTEADY), denied_by=("smooth", "motion")),
        Detail("synchronized audio", _SILENT, denied_by=_AUDIO),
    ),
    W.IMAGE_TO_VIDEO: (
        Detail("smooth natural motion", _any(_UNSTEADY)),
        Detail("stable subject", _any(_DEFORMING)),
    ),
    W.TEXT_TO_VIDEO: (
        Detail("cinematic", _UNCINEMATIC),
        Detail("smooth motion", _any(_UNSTEADY), denied_by=("smooth", "motion")),
        Detail("detailed scene", _any(_SIMPLE), denied_by=("detailed", "details", "detail")),
    ),
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
# Each style as a prompt may say it, or take it back ("no photorealism", "never cartoonish").
_STYLE_WORDS: dict[Style, tuple[str, ...]] = {
    "photorealistic": ("photorealistic", "photorealism", "photoreal", "realistic", "realism"),
    "cinematic": ("cinematic",), "anime": ("anime", "manga"),
    "cartoon": ("cartoon", "cartoonish", "cartoony"),
    "watercolor": ("watercolor", "watercolour"), "oil_painting": ("oil",), "sketch": ("sketch", "pencil"),
    "digital_art": ("digital",), "3d_render": ("3d", "cgi", "render", "rendered"),
    "vintage": ("vintage", "retro", "old-fashioned"), "minimalist": ("minimalist", "minimal", "minimalism"),
}
# A prompt that names a medium or a shape of its own means it: the preference (a default the user
# set once) does not contradict it ("a watercolor painting of a fox" got ", photorealistic";
# "a vertical phone wallpaper" got ", 16:9 aspect ratio"). Words that also describe things ("a
# charcoal gray kitten", "acrylic nails", "a photo album", "vertical stripes", "a widescreen TV")
# name a medium or shape only before what is drawn or framed: "charcoal drawing", "vertical poster".
_RENDERED = (r"(?:of|style|painting|drawing|illustration|art|artwork|portrait|render|rendering|look|image|"
             r"picture|print|poster|photo|photograph|shot|sketch|icon|logo|sticker|graphic|design)")
_NAMES_A_MEDIUM = re.compile(
    r"\b(?:photo-?realistic|hyper-?realistic|realistic|photoreal|lifelike|anime|manga|watercolou?r|"
    r"oil[- ]paint(?:ing|ed)|oil on canvas|gouache|sketch(?:ed|es)?|line art|"
    r"digital (?:art|painting|illustration)|"
    r"pixel art|low[- ]poly|cgi|claymation|stop[- ]motion|impressionist|cubist|surrealist|ukiyo-e|pop art|"
    r"kawaii|chibi|ghibli|simpsons|pixar|disney|minecraft|south park|in the style of|"
    # What a photograph, a render or an artist's work is said to be made with.
    r"shot on|\d+ ?mm(?: lens)?|f/\d|kodak|portra|canon|nikon|leica|fujifilm|dslr|selfie|screenshot|"
    r"unreal engine|octane|blender|rendered|artstation|"
    r"diagram|x-ray|blueprint|stained glass|tattoo design|embroidery|infographic|doodle|stick figure|"
    r"drawn by|abstract|stylized|stylised|sketching|"
    # A style named by a word or two ("ghibli-style"); bounded, or it backtracked from every word
    r"(?<![\w-])[\w-]{1,40}[- ]style|"
    r"photo(?:graph)?s?(?! (?:album|booth|frame|studio|shoot|editor|app|gallery|wall))|"
    r"(?:cartoons?|comics?|charcoal|acrylic|pencil|ink|crayon|pastel|vector|flat|polaroid|3d|cinematic|"
    rf"art deco|art nouveau|noir|retro|vintage) {_RENDERED})\b"
    # Other languages' words for a medium, where no space marks a word's end: a watercolor, an
    # oil painting, ink wash, a photo, a sketch in Japanese and Chinese; Spanish, Portuguese,
    # Italian, French, German (accents dropped: the prompt is folded before it is searched).
    r"|\u6c34\u5f69|\u6cb9\u7d75|\u6cb9\u753b|\u6c34\u58a8|\u5199\u771f|\u7167\u7247|\u7d20\u63cf"
    r"|\u30b9\u30b1\u30c3\u30c1"
    r"|\b(?:acuarela|aquarela|acquerello|aquarelle|aquarell|oleo|olio|olgemalde|peinture|fotografia|foto|photographie"
    r"|dibujo|desenho|disegno|dessin|zeichnung|pintura|pittura|gemalde|lapis|matita)\b"
)
# Words for a painting or drawing in general: the preferred one refines them ("a painting of",
# + oil_painting), unless it is a photograph or a render, which would contradict them.
_NAMES_ART = re.compile(r"\b(?:painting|drawing|illustration|artwork|cartoon|lego|pixar)")
_NOT_ART: frozenset[Style] = frozenset({"photorealistic", "3d_render"})
_NAMES_A_SHAPE = re.compile(
    r"\b(?:(?:vertical|horizontal|square|tall|widescreen) (?:phone )?"
    r"(?:format|orientation|mode|aspect|image|picture|photo|poster|wallpaper|video|clip|shot|frame|"
    r"composition|layout|banner|version|crop|story|reel|thumbnail|cover|logo|icon|avatar|sticker|post|tile)|"
    r"(?:portrait|landscape|wide) (?:format|orientation|mode|aspect|poster|wallpaper|banner|version|crop)|"
    # Screens and feeds with a shape of their own.
    r"(?:phone|iphone|android|mobile|lock ?screen|home ?screen|desktop|laptop|monitor) "
    r"(?:wallpaper|background)|(?:instagram|insta|ig|facebook|fb) (?:story|stories|reels?|post)|tiktok|"
    r"youtube (?:banner|thumbnail|short)s?|"
    r"(?:twitter|x|linkedin) (?:header|banner)|"
    r"in (?:portrait|landscape)|panoram(?:a|ic)|ultra-?wide|aspect ratio|reels?|\d{3,4} ?x ?\d{3,4}|"
    r"\d{1,2} by \d{1,2})\b"
    # An orientation said as a clause of its own ("a cat, vertical").
    r"|(?:^|[,;(:]\s*)(?:vertical|horizontal|square|landscape|portrait|wide|tall)\s*(?:[,;)]|$)"
    r"|(?<![\d:.])(?:1[:x]1|4[:x]3|3[:x]4|16[:x]9|9[:x]16|3[:x]2|2[:x]3|21[:x]9|4[:x]5|5[:x]4)(?![\d:])"
    # Vertical and horizontal in Chinese and Japanese.
    r"|\u7ad6\u7248|\u7ad6\u5c4f|\u6a2a\u7248|\u6a2a\u5c4f|\u7e26\u9577|\u7e26\u578b|\u6a2a\u9577"
)  # a ratio as one says it, not any "3:16" (a verse) or "10:10" (a clock's hands); "a wide shot" and
# "a landscape photo" are a framing and a subject, not an aspect ratio
# Looks that go with any medium ("a photo of ..., cinematic"): added unless the prompt says them
# or their opposite ("a modern kitchen" is no vintage look).
# What a style transfer says when it names no look of its own ("turn this into a painting").
_GENERIC_ART = _any(r"painting|painted|drawing|drawn|illustration|artwork|art|artistic|artsy|restyle|stylize|"
                    r"style")
_LOOKS: dict[Style, re.Pattern[str]] = {
    "cinematic": _any(r"flat|vector|icon|logo|diagram|infographic|sticker|emoji|clip ?art|pixel art|"
                      + _HOMEMADE),
    "vintage": _any(r"modern|futuristic|contemporary|sci-?fi|cyberpunk|space age"),
    "minimalist": _any(r"busy|crowded|cluttered|maximalist|ornate|intricate|bustling|chaotic"),
}

# A new picture or clip made from words takes the user's style and format. The other workflows
# start from an image, which already has both (the look a style transfer aims at is a style too).
FROM_TEXT = frozenset(WorkflowType) - IMAGE_INPUT_WORKFLOWS
STYLED = FROM_TEXT | {W.STYLE_TRANSFER}

# Text to print, unquoted, at the prompt's end ("a mug that says hi mom"): whatever followed would
# be printed too, so nothing is appended. A trigger after the last quote or sentence end runs to
# the end; quoted text ends where its quotes do.
_PRINT_TRIGGER = re.compile(
    r"\b(?:says?|saying|(?:that|which|it) reads?|reading|spells|label+ed|titled|caption(?:ed)?|"
    r"with the (?:text|words?|name)|with text|the words?)\b"
    r"|\b(?:sign|banner|poster|label|t-?shirt|shirt|mug|card|cake|tattoo|headline|title|slogan)\s*:",
    re.IGNORECASE,
)
# Where quoted text ends. Not a period or "!": they end text as often as sentences ("Dr. Smith",
# "happy bday!"), and detail glued to printed text is printed.
_CLOSING_QUOTES = ('"', "\u201d", "\u00bb", "\u300d")
# Where a prompt's own settings start: parameters ("--ar 9:16", "--no people", autocorrected to
# "\u2014ar") and a negative prompt as a clause of its own ("a cat, negative: blurry"). What is
# appended belongs to the description before them.
_SETTINGS = re.compile(r"(?:^|(?<=[\s,;]))(?:--|\u2014)[a-z]"
                       r"|(?:^|(?<=[,.;(|\n]))\s*(?:negative(?: prompt)?|neg)\s*:", re.IGNORECASE)
# What the settings take back: "--no X" and the negative prompt's words.
_SETTINGS_AGAINST = re.compile(r"--no\s+([^-]*)|\b(?:negative(?: prompt)?|neg)\s*:(.*)",
                               re.IGNORECASE | re.DOTALL)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Words that take back the next few ("no music", "not a cartoon", "sin m\u00fasica"), in the languages
# the classifier was trained on (folded: "n\u00e3o" is "nao").
_NEGATORS = (
    "no", "not", "without", "never", "avoid", "zero", "don't", "dont", "doesn't", "isn't", "nothing",
    "sin", "sans", "pas", "ohne", "kein", "keine", "nicht", "sem", "nao", "senza",
    "\u0431\u0435\u0437", "\u043d\u0435", "\u043d\u0435\u0442",  # Russian: without, not, no
)
_NEGATOR_WORDS = frozenset(_NEGATORS)
_NEGATED_SPAN = 3  # words after a negator that it takes back, within its clause
# A negator and the words it takes back ("no-fly" is one word, no negator).
_NEGATION = re.compile(rf"(?<![\w'-])(?:{'|'.join(map(re.escape, _NEGATORS))})(?![\w'-])"
                       rf"((?:[ \t]+[^\W_]+(?:['-][^\W_]+)*){{1,{_NEGATED_SPAN}}})")


def _same_word(a: str, b: str) -> bool:
    """One word, give or take an ending of two letters: "details" says "detailed", "motions"
    "motion"; "professor" is not "professional", "cinema" not "cinematic". Under four letters,
    only itself ("ton" is not "tony")."""
    if a == b:
        return True
    shared = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return shared >= max(len(a), len(b)) - 2 and shared >= 4


class _Said:
    """What a prompt says (lower case, accents dropped), what it takes back, and the rest."""

    def __init__(self, text: str, settings: str = "") -> None:
        text = text.lower().replace("\u2019", "'")  # "don\u2019t", as phones type it
        self.text = text if text.isascii() else fold_accents(text)
        words = _WORD.findall(self.text)
        self.words = _by_prefix(words)
        self.negated: list[str] = []  # the words of what it takes back, span by span
        self.affirmed = self.text  # what `unless` and the looks' opposites read
        if not _NEGATOR_WORDS.isdisjoint(words):  # few prompts
            self.negated = _NEGATION.findall(self.text)
            self.affirmed = _NEGATION.sub(" ", self.text)
        self.settings = settings.lower()
        self.negated += [" ".join(against) for against in _SETTINGS_AGAINST.findall(self.settings)]
        # Each span's words by their first four letters: a long negative prompt is many words.
        self._negated_words = [_by_prefix(_WORD.findall(span)) for span in self.negated]

    def says(self, words: tuple[str, ...]) -> bool:
        return all(any(_same_word(word, w) for w in self.words.get(word[:4], ())) for word in words)

    def denies(self, words: tuple[str, ...], opposite: re.Pattern[str] | None = None) -> bool:
        """Whether a span it takes back holds one of `words`, and not as part of their `opposite`."""
        return any(any(_same_word(word, w) for word in words for w in by_prefix.get(word[:4], ()))
                   and (opposite is None or opposite.search(span) is None)
                   for span, by_prefix in zip(self.negated, self._negated_words, strict=True))

    def wants(self, detail: Detail) -> bool:
        """Whether the prompt lacks this detail and says nothing against it."""
        return not (self.says(detail.words) or self.denies(detail.denied_by, detail.unless)
                    or (detail.unless is not None and detail.unless.search(self.affirmed) is not None))


def _by_prefix(words: list[str]) -> dict[str, list[str]]:
    """Words by their first four letters: a word is only ever compared with those that share them."""
    found: dict[str, list[str]] = {}
    for word in words:
        found.setdefault(word[:4], []).append(word)
    return found


def fold_accents(text: str) -> str:
    """Text with accents dropped, as BERT's uncased tokenizer drops them ("v\u00eddeo" is "video").
    NFKD also parts kana from their voicing marks (\u30ac -> \u30ab): no pattern here depends on them."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def _prints_text_at_end(text: str) -> bool:
    if text.count('"') % 2 or text.count("\u201c") > text.count("\u201d"):
        return True  # a quote left open: whatever follows is inside it
    tail = text[max(text.rfind(quote) for quote in _CLOSING_QUOTES) + 1:]
    return _PRINT_TRIGGER.search(tail) is not None


def enhance(prompt: str, workflow: WorkflowType, preferences: Preferences) -> str:
    """Append workflow detail to short prompts (longer ones already say what they want), and the
    preferred style and format where the workflow makes something new and the prompt does not
    say them already. Nothing the prompt says already or says against is added."""
    style = STYLES[preferences.style] if preferences.style is not None and workflow in STYLED else ""
    shape = FORMATS[preferences.format] if preferences.format is not None and workflow in FROM_TEXT else ""
    described, settings = prompt, ""
    if ("--" in prompt or ":" in prompt) and (start := _SETTINGS.search(prompt)) is not None:
        # A separator before them goes with them; a sentence's end stays ("Jr."). Stripped here,
        # not in the pattern: a separator run before every position made it quadratic.
        described = prompt[:start.start()].rstrip(" \t\n,;([|")
        settings = prompt[len(described):]
    short = is_short(described)
    if not (short or style or shape) or not any(ch.isalnum() for ch in described):
        return prompt  # nothing to enrich: long and no preference, or no description at all
    if _prints_text_at_end(described):
        return prompt
    said = _Said(described, settings)
    additions = [detail.text for detail in SUFFIXES[workflow] if said.wants(detail)] if short else []
    if style and _wants_style(said, preferences.style, style, workflow, additions):
        additions.insert(0, style)
    if shape and not _NAMES_A_SHAPE.search(f"{said.text} {said.settings}"):
        additions.append(shape)
    if not additions:
        return prompt
    # A dangling separator (a full-width comma too, or a dash) is the list's to say: it doubled.
    base = described.rstrip().rstrip(",;:-\u2013\u2014\uff0c\u3001\uff1b\uff1a").rstrip()
    enhanced = f"{base}{' ' if base.endswith(_SENTENCE_ENDS) else ', '}{', '.join(additions)}"
    # A negative prompt whose period ended the description gets one again; a separator or a
    # bracket it came with, or parameters, stay as they were.
    if settings and not settings.lstrip().startswith((",", ";", "(", "[", "|", "--", "\u2014")):
        settings = ". " + settings.lstrip()
    return enhanced + settings


def _wants_style(said: _Said, preferred: Style | None, style: str, workflow: WorkflowType,
                 details: list[str]) -> bool:
    """Whether the preferred style adds to the prompt: not said already (by the prompt, its
    settings or its detail), not taken back ("not a cartoon"), and not replaced by the prompt's own."""
    assert preferred is not None
    words = _STYLE_WORDS[preferred]  # "watercolor", not "water": "a desert, no water" keeps it
    if (style.lower() in f"{said.text} {said.settings} {' '.join(details)}" or said.denies(words)
            or any(said.says((word,)) for word in words)):
        return False
    if workflow is W.STYLE_TRANSFER and not _GENERIC_ART.search(said.affirmed):
        return False  # the prompt is the look ("van gogh", "lego"): the preference refines only "a painting"
    if preferred in _LOOKS:  # a look is said or not; its opposite rules it out
        return _LOOKS[preferred].search(said.affirmed) is None
    # A medium is one of several, and the prompt's own wins (one it takes back does not).
    return not (_names_a_medium(said.affirmed, workflow)
                or (preferred in _NOT_ART and _NAMES_ART.search(said.affirmed) is not None))


def _names_a_medium(prompt: str, workflow: WorkflowType) -> bool:
    """In a style transfer "this photo" is the user's image, not the look asked for."""
    if workflow is W.STYLE_TRANSFER:
        if re.search(r"\blooks? like\b", prompt):  # "make it look like a Pixar movie": its own target
            return True
        prompt = re.sub(r"\b(?:this|my|the) (?:photo|photograph|picture|image|pic)s?\b", "", prompt)
    return _NAMES_A_MEDIUM.search(prompt) is not None
