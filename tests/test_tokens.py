"""The word-cached tokenizer gives exactly the ids MiniLM's own tokenizer gives."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from tokenizers import Tokenizer

from pipeline.encoder import MAX_SEQ_LENGTH, minilm_tokenizer
from pipeline.tokens import WordCachedTokenizer
from tests.test_loadtest import load_script

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return minilm_tokenizer()


@pytest.fixture
def cached(tokenizer: Tokenizer) -> WordCachedTokenizer:
    return WordCachedTokenizer(tokenizer, max_length=MAX_SEQ_LENGTH)


def assert_same_ids(tokenizer: Tokenizer, cached: WordCachedTokenizer, texts: list[str]) -> None:
    for text in texts:
        assert cached.ids(text) == tokenizer.encode(text).ids, text


def test_the_labelled_prompts_tokenize_as_the_tokenizer_does(tokenizer: Tokenizer, cached: WordCachedTokenizer) -> None:
    prompts = [msgspec.json.decode(line)["prompt"]
               for name in ("train.jsonl", "dev.jsonl") for line in (DATA / name).read_bytes().splitlines()
               if line.strip()]
    assert len(prompts) > 1000
    assert_same_ids(tokenizer, cached, prompts)
    assert_same_ids(tokenizer, cached, prompts)  # the second time every chunk comes from the cache


def test_the_load_testers_variations_tokenize_as_the_tokenizer_does(
    tokenizer: Tokenizer, cached: WordCachedTokenizer
) -> None:
    mix = load_script("loadtest").PromptMix(random.Random(7), repeat_share=0.0, hot=10)
    prompts = [msgspec.json.decode(mix.body())["prompt"] for _ in range(2000)]
    assert_same_ids(tokenizer, cached, prompts)


def test_random_ascii_tokenizes_as_the_tokenizer_does(tokenizer: Tokenizer, cached: WordCachedTokenizer) -> None:
    """Punctuation runs, underscores, apostrophes, tabs and newlines, digits inside words."""
    rng = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 \t\n\r" + "".join(map(chr, range(33, 127)))
    texts = ["".join(rng.choices(alphabet, k=rng.randrange(0, 80))) for _ in range(3000)]
    assert_same_ids(tokenizer, cached, texts)


@pytest.mark.parametrize("text", [
    "",
    "   ",
    "make my hair blonde with bangs",
    "put @sarah in this red dress!!!",
    "it's a cat_dog -- (really) [sic] {ok} <3 ~~ `code` ^_^ \\o/",
    "x" * 150,  # longer than WordPiece's 100 characters: [UNK]
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "animate " * 300,  # truncated to the first 254 tokens
    "a," * 200,
])
def test_edge_cases_tokenize_as_the_tokenizer_does(
    tokenizer: Tokenizer, cached: WordCachedTokenizer, text: str
) -> None:
    assert_same_ids(tokenizer, cached, [text])


def test_a_prompt_of_mostly_new_words_is_tokenized_whole_and_not_cached(
    tokenizer: Tokenizer, cached: WordCachedTokenizer
) -> None:
    rng = random.Random(5)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=8)) for _ in range(300)]
    assert_same_ids(tokenizer, cached, [" ".join(words)])
    assert len(cached) == 0
    assert_same_ids(tokenizer, cached, ["make my hair blonde with bangs"])
    assert len(cached) == 6


class CountingTokenizer:
    """The real tokenizer, counting its encode calls."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, 0

    def encode(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.tokenizer.encode(*args, **kwargs)  # type: ignore[arg-type]

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)


def test_a_prompt_of_mostly_new_words_costs_one_tokenizer_call(tokenizer: Tokenizer) -> None:
    """Counted before tokenizing: it cost eight chunk calls, then the whole text, every time."""
    counting = CountingTokenizer(tokenizer)
    cached = WordCachedTokenizer(counting, max_length=MAX_SEQ_LENGTH)  # type: ignore[arg-type]
    prompt = "a luminous zeppelin drifting over foggy basalt cliffs beside crumbling lighthouses tonight"
    for _ in range(3):
        assert cached.ids(prompt) == tokenizer.encode(prompt).ids
    assert counting.calls == 3
    assert cached.ids("a zeppelin") == tokenizer.encode("a zeppelin").ids and counting.calls == 5


def test_long_text_is_truncated_to_the_models_length(cached: WordCachedTokenizer) -> None:
    ids = cached.ids("animate this sunset " * 200)
    assert len(ids) == MAX_SEQ_LENGTH
    assert ids[-1] == cached.ids("")[-1]  # still ends with [SEP]


@pytest.mark.parametrize("text", [
    "café au lait, naïve résumé",  # accents: the normalizer strips them
    "\uff21\uff2e\uff29\uff2d\uff21\uff34\uff25 this",  # full-width letters
    "make it pop 🎉 please",
    "tab\x0bvertical and form\x0cfeed",  # control characters the normalizer removes
    "null\x00byte",
    "写真をアニメにして",  # CJK: the pre-tokenizer isolates each character
    "non\u00a0breaking space",
])
def test_text_outside_printable_ascii_goes_to_the_tokenizer_whole(
    tokenizer: Tokenizer, cached: WordCachedTokenizer, text: str
) -> None:
    assert_same_ids(tokenizer, cached, [text])
