"""MiniLM's token ids for one prompt, word by word from a cache where that gives the same ids.

The fast tier tokenizes every cache miss, and `tokenizers`' `encode` built a whole `Encoding`
(offsets, masks, words) to hand back ~20 ids: ~75 us of the ~335 us fast tier, measured on the
slow benchmark VM. Words repeat across prompts, so for text whose tokenization is known to split
into independent chunks, each chunk's ids are looked up (and tokenized once, on a miss).

Which text that is: BERT's uncased pipeline (the normalizer lower-cases, removes control
characters and turns whitespace into spaces; the pre-tokenizer splits on whitespace and isolates
every punctuation character; WordPiece then works inside each piece) has, for printable ASCII,
no step that looks across whitespace. So there the ids are the whitespace-separated chunks' ids
in order (each chunk tokenized alone, punctuation split inside it as usual), between [CLS] and
[SEP], truncated like the tokenizer truncates. Anything else (non-ASCII letters, accents,
control characters) goes to the tokenizer whole; `tests/test_tokens.py` pins the equality on
the labelled prompts, the load tester's mix and random ASCII.
"""

from __future__ import annotations

import re
from typing import Final

from tokenizers import Tokenizer

# Printable ASCII and the whitespace BERT keeps as whitespace (\t \n \r): the text covered.
# (str.split() also splits on \x0b, \x0c and \x1c-\x1f, which BERT removes as control characters.)
_COVERED: Final = re.compile(r"[\t\n\r\x20-\x7e]*")
CHUNK_CACHE: Final = 50_000  # distinct chunks kept (cleared when full, like the TF-IDF words)
# A prompt with more new chunks than this is mostly words never seen (a paste, random text): it
# is tokenized whole, in one call, and teaches the cache nothing, so it cannot flush the cache.
NEW_CHUNKS_PER_PROMPT: Final = 8


class WordCachedTokenizer:
    """`tokenizer.encode(text).ids`, from per-chunk ids where the text allows it."""

    def __init__(self, tokenizer: Tokenizer, *, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError("the tokenizer has no [CLS]/[SEP] tokens")
        self._cls, self._sep = int(cls_id), int(sep_id)
        self._chunks: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if _COVERED.fullmatch(text) is None:
            return list(self.tokenizer.encode(text).ids)
        chunks = self._chunks
        words = text.lower().split()
        # Counted before any is tokenized: found one by one, a prompt of 12 new words cost 8
        # chunk calls and then the whole-text call (~9x one call), every time it came, since
        # such a prompt teaches the cache nothing.
        unseen = [chunk for chunk in dict.fromkeys(words) if chunk not in chunks]
        if len(unseen) > NEW_CHUNKS_PER_PROMPT:
            return list(self.tokenizer.encode(text).ids)
        new = {chunk: self.tokenizer.encode(chunk, add_special_tokens=False).ids for chunk in unseen}
        ids = [self._cls]
        for chunk in words:
            known = chunks.get(chunk)
            ids += new[chunk] if known is None else known
        if new:
            if len(chunks) + len(new) > CHUNK_CACHE:
                chunks.clear()
            chunks.update(new)
        if len(ids) >= self.max_length:  # the tokenizer keeps the first max_length - 2 tokens
            del ids[self.max_length - 1:]
        ids.append(self._sep)
        return ids

    def __len__(self) -> int:
        """Chunks cached."""
        return len(self._chunks)
