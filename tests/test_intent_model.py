"""The embedded classifier's text features: TF-IDF over char n-grams, words and word bigrams."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.intent_model import Tfidf, _cv_logits, _Design, _ngrams, _words, load_examples

TRAIN = Path(__file__).resolve().parents[1] / "data" / "train.jsonl"


def reference_sparse(tfidf: Tfidf, text: str) -> dict[str, float]:
    """The definition, gram by gram: sublinear tf times idf, L2-normalised, over known grams."""
    index = {g: i for i, g in enumerate(tfidf.vocab)}
    counts = Counter(g for g in _ngrams(text) if g in index)
    weights = {g: (1.0 + math.log(c)) * float(tfidf.idf[index[g]]) for g, c in counts.items()}
    norm = math.sqrt(sum(w * w for w in weights.values()))
    return {g: w / norm for g, w in weights.items()}


def test_sparse_vectors_match_the_definition_first_time_and_from_the_word_cache() -> None:
    tfidf = Tfidf.fit([e.prompt for e in load_examples(TRAIN)])
    prompts = [
        "change my hair to blonde with bangs",
        "hair hair hair, blonde blonde",  # repeated words count as often as they appear
        "animte this sunset plz",  # a typo still shares char n-grams
        "zqxj vbnm",  # hardly anything known
        "Animate THIS sunset!",  # case and punctuation
        "sunset",  # one word: no bigrams
        "make the sunset glow " * 40,  # over 255 grams, each many times: tf past the lookup table
        "Anima este vídeo del océano",  # accents dropped: shares grams with "video", "oceano"
        "把这张照片变成视频",  # no spaces: one word, its char n-grams
    ]
    for _ in range(2):  # the second pass reads every word from the cache
        for text in prompts:
            idx, val = tfidf.sparse(text)
            got = {tfidf.vocab[i]: float(v) for i, v in zip(idx, val, strict=True)}
            want = reference_sparse(tfidf, text)
            assert got.keys() == want.keys(), text
            assert all(math.isclose(got[g], want[g], rel_tol=1e-5) for g in want), text
    assert len(tfidf.sparse("!!! ???")[0]) == 0  # no words at all
    dense = tfidf.dense(prompts[:2])
    idx, val = tfidf.sparse(prompts[0])
    assert np.allclose(dense[0, idx], val) and np.count_nonzero(dense[0]) == len(idx)


def test_words_in_any_script_lose_case_and_accents_as_berts_uncased_tokenizer_does() -> None:
    assert _words("Vídeo cinematográfico del OCÉANO") == _words("video cinematografico del oceano")
    assert _words("Ölgemälde, s'il vous plaît!") == ["olgemalde", "s'il", "vous", "plait"]
    assert _words("把这张照片 变成视频") == ["把这张照片", "变成视频"]
    assert _words("a_b @sarah's 4k") == ["a", "b", "@sarah's", "4k"]  # the ASCII path: no underscores
    assert _words("a_b @sarah's 4k é") == ["a", "b", "@sarah's", "4k", "e"]  # the other path: the same


def test_out_of_fold_logits_can_score_other_features_of_the_same_rows() -> None:
    """CV with heads trained on one set of features (float embeddings) and scored on another
    (int8 ones): the same features score as the plain CV does; other features score differently."""
    texts = [e.prompt for e in load_examples(TRAIN)][:200]
    tfidf = Tfidf.fit(texts)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=len(texts)).astype(np.intp)
    dense = rng.standard_normal((len(texts), 4)).astype(np.float32)
    dense[:, 0] += y  # something to learn
    x = _Design(dense, texts, tfidf)
    plain = _cv_logits(x, y, 3)
    assert np.array_equal(_cv_logits(x, y, 3, scored=_Design(dense.copy(), texts, tfidf)), plain)
    nudged = _cv_logits(x, y, 3, scored=_Design(dense + np.float32(0.5), texts, tfidf))
    assert nudged.shape == plain.shape and not np.allclose(nudged, plain)
