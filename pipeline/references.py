"""@tag references: "put @sarah in this red dress" names an image the user saved as `sarah`."""

from __future__ import annotations

import re
import unicodedata
from typing import Protocol

from pipeline.enhance import UNSPACED

# What ends a tag begun in Latin or another spaced script: text in a script written without
# spaces, or Korean, whose particles join the word before ("@sarah\uc758 \uc0ac\uc9c4": sarah's photo).
_ENDS_A_SPACED_TAG = re.compile(f"{UNSPACED.pattern}|[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")

MAX_TAG_CHARS = 64


# Characters no reader sees that count as letters or marks (variation selectors, the combining
# grapheme joiner, Mongolian's variant selectors, Hangul fillers, Khmer's invisible vowels):
# "sarah" with one would be a second tag that looks the same.
_INVISIBLE = frozenset([
    *"\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u3164\uffa0",
    *map(chr, range(0xFE00, 0xFE10)), *map(chr, range(0xE0100, 0xE01F0)),
])  # fmt: skip


def _is_word_char(char: str) -> bool:
    """A letter or digit in any script, `_`, or a combining mark (the vowel signs of Devanagari
    or Thai, an accent left uncomposed): what a name is written with."""
    if char in _INVISIBLE:
        return False
    return char.isalnum() or char == "_" or unicodedata.category(char)[0] == "M"


def _is_tag_char(char: str) -> bool:
    return _is_word_char(char) or char in ".-"


def is_tag(text: str) -> bool:
    """Whether `text` (no '@') is a tag a prompt can mention: a letter or digit, then up to 63 of
    those, marks and `_.-`, not ending in '.' (which ends the sentence, not the tag)."""
    return (0 < len(text) <= MAX_TAG_CHARS and text[0].isalnum() and text[0] not in _INVISIBLE
            and not text.endswith(".") and all(_is_tag_char(char) for char in text))  # fmt: skip


def normal_tag(text: str) -> str:
    """A tag as it is saved and looked up: composed (NFC, as prompts are) and lower-cased."""
    return unicodedata.normalize("NFC", text).lower()


def find_mentions(prompt: str) -> tuple[str, ...]:
    """Tags in order of first appearance, normalised, without '@' or trailing dots: "@María" in
    any script is "maría". A tag longer than any that can be saved is no mention (cut short, it
    would name another). A tag begun in a script written with spaces ends where one written
    without them, or Korean, begins ("@sarahの写真" is @sarah); one begun in such a script runs to
    the next space or punctuation ("@東京の写真" is the tag 東京の写真): write "@東京 の写真"."""
    if "\uff20" in prompt:  # the full-width @ Japanese and Chinese keyboards type
        prompt = prompt.replace("\uff20", "@")
    if "@" not in prompt:  # most prompts: nothing else runs
        return ()
    seen: dict[str, None] = {}
    at = prompt.find("@")
    size = len(prompt)
    while at >= 0:
        end = at + 1
        before = prompt[at - 1] if at else " "
        # Not an e-mail's "@" (after a name's letters; a Chinese or Japanese word before it is no name).
        if not ((_is_word_char(before) and UNSPACED.match(before) is None) or before == "@"):
            # Looked at up to one character past the longest tag; dots after that are an ellipsis.
            bound = min(size, end + MAX_TAG_CHARS + 1)
            spaced = end < size and _ENDS_A_SPACED_TAG.match(prompt[end]) is None
            while end < bound and _continues_tag(prompt[end], spaced):
                end += 1
            while end < size and prompt[end] == ".":  # an ellipsis ends a sentence, not the tag
                end += 1
            # A run that goes on past the longest tag, or on past a character no reader sees, is
            # no mention: cut there, it would name another tag.
            goes_on = end < size and (_continues_tag(prompt[end], spaced) or (
                prompt[end] in _INVISIBLE and end + 1 < size and _is_tag_char(prompt[end + 1])))
            tag = prompt[at + 1 : end].rstrip(".")
            if tag and not goes_on and is_tag(tag):
                seen.setdefault(normal_tag(tag), None)
        at = prompt.find("@", end)
    return tuple(seen)


def _continues_tag(char: str, spaced: bool) -> bool:
    """Whether `char` is more of a tag begun in a script written with spaces (`spaced`) or not."""
    return _is_tag_char(char) and not (spaced and _ENDS_A_SPACED_TAG.match(char) is not None)


class ReferenceStore(Protocol):
    async def resolve(self, user_id: str, tags: tuple[str, ...]) -> dict[str, str]:
        """Map each known tag of this user to its image URL; unknown tags are left out."""
        ...


class UserTagStore(ReferenceStore, Protocol):
    """Where users save their tags: memory by default, Postgres with DATABASE_URL. Tags come
    normalised (`normal_tag`), as find_mentions gives them."""

    async def save(self, user_id: str, tag: str, image_url: str) -> bool:
        """Save or replace one tag; False: a new tag, and the user has as many as one may keep."""
        ...

    async def list(self, user_id: str) -> dict[str, str]: ...

    async def delete(self, user_id: str, tag: str) -> bool:
        """Forget one tag; False: the user had no such tag."""
        ...


class MemoryReferenceStore:
    """Per-process tags: the default when no database is configured."""

    def __init__(self, *, per_user: int, in_all: int) -> None:
        self.per_user, self.in_all = per_user, in_all  # bounds: Settings.max_tags_*
        self._tags: dict[str, dict[str, str]] = {}
        self._count = 0

    async def resolve(self, user_id: str, tags: tuple[str, ...]) -> dict[str, str]:
        mine = self._tags.get(user_id, {})
        return {tag: mine[tag] for tag in tags if tag in mine}

    async def save(self, user_id: str, tag: str, image_url: str) -> bool:
        mine = self._tags.get(user_id, {})
        if tag not in mine:
            if len(mine) >= self.per_user or self._count >= self.in_all:
                return False
            self._count += 1
        self._tags[user_id] = mine
        mine[tag] = image_url
        return True

    async def list(self, user_id: str) -> dict[str, str]:
        return dict(self._tags.get(user_id, {}))

    async def delete(self, user_id: str, tag: str) -> bool:
        mine = self._tags.get(user_id, {})
        if mine.pop(tag, None) is None:
            return False
        self._count -= 1
        if not mine:  # a user with no tags left costs no entry
            del self._tags[user_id]
        return True
