"""What a prompt may contain: per class of invisible character, refuse or strip, and why.

- C0/C1 control characters (NUL, ESC, ...; tab and newlines are fine): refused. They have no
  place in a prompt and corrupt logs and terminals.
- Bidi embeddings, overrides and isolates (U+202A-202E, U+2066-2069): refused. They make the
  text a reviewer sees in logs or analytics differ from what models read ("Trojan Source").
  Marks (LRM/RLM) stay: mixed-direction text needs them and they reorder nothing.
- Unicode tag characters (U+E0000-E007F) outside a flag emoji: refused. Invisible to people,
  read by LLMs: the "ASCII smuggling" prompt-injection channel into the LLM classifier.
- Zero-width space, word joiner and friends, BOM, soft hyphen: stripped. They mean nothing
  in a prompt, arrive innocently from copy-paste, and split keywords ("ha\u200bir") so that
  rules and caches see a different prompt than the user typed. ZWJ and ZWNJ stay: emoji
  sequences and several scripts (Persian, Indic) need them.
- Composed (NFC): "e" + a combining acute is "\u00e9", as most keyboards type it. The same visible
  prompt is one cache entry and one log line however it was typed, and the 2,000-character
  limit counts an accented letter once (it still counts code points: an emoji sequence joined
  by ZWJs counts each of its parts).
- A prompt of nothing visible (joiners, marks, format and space characters, the Hangul fillers,
  the blank braille cell) is refused as empty: it asks for nothing, yet would be classified
  and priced like a request.
"""

from __future__ import annotations

import re
import unicodedata

from gateway.errors import ValidationFailed

MAX_PROMPT_CHARS = 2000

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")
_FLAG_SEQUENCE = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")
_TAG = re.compile("[\U000e0000-\U000e007f]")
_INVISIBLE = re.compile("[\u00ad\u180e\u200b\u2060-\u2064\ufeff]")
# Letters or symbols to Unicode, blank to the eye: the Hangul fillers and the blank braille cell.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Marks, format characters (ZWJ, ZWNJ, LRM...), separators and controls: nothing on their own.
_UNSEEN = frozenset({"Mn", "Me", "Cf", "Zs", "Zl", "Zp", "Cc"})


def clean_prompt(raw: str, *, field: str = "prompt") -> str:
    """The prompt as stages will see it, or a 422 naming `field`."""
    prompt = unicodedata.normalize("NFC", _INVISIBLE.sub("", raw)).strip()
    if not prompt:
        raise ValidationFailed("prompt must not be empty", field=field)
    if not "!" <= prompt[0] <= "~" and not _shows_anything(prompt):  # ASCII first: visible
        raise ValidationFailed("prompt must not be empty: it has no visible characters", field=field)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValidationFailed(
            f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}", field=field
        )
    if _CONTROL.search(prompt):
        raise ValidationFailed("prompt contains control characters", field=field)
    if _BIDI_CONTROL.search(prompt):
        raise ValidationFailed("prompt contains bidirectional override characters", field=field)
    if _TAG.search(_FLAG_SEQUENCE.sub("", prompt)):
        raise ValidationFailed("prompt contains invisible Unicode tag characters", field=field)
    return prompt


def _shows_anything(prompt: str) -> bool:
    # Stops at the first visible character.
    return any(ch not in _BLANK and unicodedata.category(ch) not in _UNSEEN for ch in prompt)
