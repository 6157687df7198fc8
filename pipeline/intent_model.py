"""The embedded intent model: features, a two-tier logistic-regression head, training.

Why two tiers: the MiniLM transformer costs ~6 ms per prompt in NumPy on this
machine (its 42 MB of weights stream from memory on every call), over the 2 ms
budget. A static embedding distilled from the same MiniLM plus character
n-gram TF-IDF costs ~0.3 ms and is right on most prompts. The fast tier answers
when its calibrated confidence clears ``escalate_below``; only the uncertain
rest pays for the transformer, whose head sees every feature.

Everything here is NumPy; training is full-batch Adam on ~1k rows (seconds).
The artifact is one ``.npz`` (no pickle) written by ``python -m gateway train``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from pipeline.encoder import (
    MAX_SEQ_LENGTH,
    MiniLMEncoder,
    SentenceEncoder,
    StaticEncoder,
    distill_static_table,
)
from pipeline.enhance import fold_accents
from pipeline.tokens import WordCachedTokenizer

__all__ = [
    "ARTIFACT_VERSION", "IntentExample", "IntentModel", "TrainReport",
    "default_artifact_path", "expected_calibration_error", "load_examples",
    "static_table_path", "train_model",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# Bump when the feature recipe or the artifact layout changes: it names the
# artifact file and goes into the classifier's version (and so cache keys).
ARTIFACT_VERSION: Final = "2tier-v3"
ARTIFACT_DIR: Final = Path(__file__).resolve().parent / "artifacts"
NGRAM_SIZES: Final = (2, 3, 4, 5)
MIN_DF: Final = 2
WORD_CACHE: Final = 50_000  # distinct words whose TF-IDF indices are kept (~20 MB when full)
L2: Final = 1e-4
ADAM_STEPS: Final = 300
ADAM_LR: Final = 0.1
CV_FOLDS: Final = 5
# Fast-tier confidence under which MiniLM runs. Lower keeps p95 latency down
# (fewer escalations), higher buys accuracy; see README "Embedded classifier".
DEFAULT_ESCALATE_BELOW: Final = 0.8
STATIC_TABLE_ID: Final = "all-minilm-l6-v2-mean3"  # model + recipe of the distilled table
CONTEXT_FEATURES: Final = 3  # has_working_image, has_uploaded_images, has_mentions
_WORD = re.compile(r"[a-z0-9@']+")
# The same words in any script (letters and digits, no underscore), for text that is not ASCII.
_ANY_WORD = re.compile(r"(?:[^\W_]|[@'])+")
# 1 + ln(count) for the counts a prompt of up to 255 grams can have (index 0 is unused).
_SUBLINEAR_TF: Final = (1.0 + np.log(np.maximum(np.arange(256), 1))).astype(np.float32)
_MENTION = re.compile(r"(?<![\w@])@([a-z0-9_.]+)", re.IGNORECASE)


def default_artifact_path() -> Path:
    return ARTIFACT_DIR / f"local-{ARTIFACT_VERSION}.npz"


class IntentExample(msgspec.Struct, frozen=True):
    """What the model sees of one request: the text and its context flags."""

    prompt: str
    has_working_image: bool = False
    has_uploaded_images: bool = False
    has_mentions: bool = False
    label: str | None = None

    @classmethod
    def from_prompt(cls, prompt: str, *, working_images: int = 0, uploaded_images: int = 0,
                    mentions: int = 0, label: str | None = None) -> IntentExample:
        """@mentions count whether the caller parsed them or they are only in the text."""
        return cls(prompt=prompt, has_working_image=working_images > 0,
                   has_uploaded_images=uploaded_images > 0,
                   has_mentions=mentions > 0 or _MENTION.search(prompt) is not None,
                   label=label)


class _EvalRow(msgspec.Struct):
    prompt: str
    workflow: str
    working_images: list[str] = []
    uploaded_images: list[str] = []


def load_examples(path: Path) -> list[IntentExample]:
    """Read the eval/training JSONL format into labelled examples."""
    decoder = msgspec.json.Decoder(_EvalRow)
    rows = [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [IntentExample.from_prompt(r.prompt, working_images=len(r.working_images),
                                      uploaded_images=len(r.uploaded_images), label=r.workflow)
            for r in rows]


# --- text features -----------------------------------------------------------

def _ngrams(text: str) -> list[str]:
    """Char n-grams inside word boundaries, plus words and word bigrams.

    Char n-grams make typos ("animte", "upsacle") land near the right words.
    """
    words = _words(text)
    grams = [g for w in words for g in _word_grams(w)]
    grams.extend(_bigrams(words))
    return grams


def _words(text: str) -> list[str]:
    """The prompt's words, lower-cased and with accents dropped, as BERT's uncased tokenizer does:
    "vídeo" and "video" share their grams. Letters and digits of any script: a run of CJK
    characters is one word, whose char n-grams carry it (scripts written with vowel signs, such
    as Devanagari or Thai, break at the signs: not covered by the training data either). ASCII
    text (most prompts) takes the cheaper pattern; any other character (an emoji, a curly
    apostrophe) costs the whole prompt the slower one (~10 us for 250 characters)."""
    text = text.lower()
    if text.isascii():
        return _WORD.findall(text)
    return _ANY_WORD.findall(fold_accents(text))


def _word_grams(word: str) -> list[str]:
    """The grams of one word, whatever its neighbours: its char n-grams and the word itself."""
    padded = f" {word} "
    grams = [padded[i:i + n] for n in NGRAM_SIZES for i in range(len(padded) - n + 1)]
    grams.append("w:" + word)
    return grams


def _bigrams(words: Sequence[str]) -> list[str]:
    return [f"b:{a}_{b}" for a, b in itertools.pairwise(words)]


class Tfidf:
    """Sublinear TF-IDF over a fixed n-gram vocabulary, as sparse (index, value)."""

    def __init__(self, vocab: Sequence[str], idf: FloatArray) -> None:
        self.vocab = list(vocab)
        self.idf = idf
        self._index = {g: i for i, g in enumerate(self.vocab)}
        # A word's ~4 grams per letter, sliced and hashed, were most of a cache miss's fast tier;
        # words repeat across prompts, so each word's vocabulary indices are kept (bounded).
        self._word_ids: dict[str, npt.NDArray[np.intp]] = {}

    @classmethod
    def fit(cls, texts: Sequence[str]) -> Tfidf:
        df: Counter[str] = Counter()
        for t in texts:
            df.update(set(_ngrams(t)))
        vocab = sorted(g for g, c in df.items() if c >= MIN_DF)
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in vocab], dtype=np.float32)
        return cls(vocab, idf)

    def __len__(self) -> int:
        return len(self.vocab)

    def sparse(self, text: str) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """The TF-IDF vector of ``_ngrams(text)``: the indices (ascending) and values of its non-zeros.

        Counted in NumPy (sort, then runs of equal ids): a Counter and two `fromiter`s over ~190
        grams, one Python int at a time, were half of this function (~40 of ~80 us).
        """
        ids = self._gram_ids(text)
        n = len(ids)
        if not n:
            return ids, np.zeros(0, dtype=np.float32)
        ids.sort()
        idx, tf = self._runs(ids, n)
        val = self.idf.take(idx)
        if tf is not None:
            val *= tf
        val *= 1.0 / math.sqrt(float(np.dot(val, val)))
        return idx, val

    def sparse_many(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.intp], FloatArray, list[int]]:
        """`sparse` of every text, counted in one sort over all of them (row * vocabulary + id):
        the indices and values of all rows end to end, and where each row starts and ends (row
        i is ``[bounds[i]:bounds[i + 1]]``)."""
        rows = [self._gram_ids(text) for text in texts]
        lengths = [len(ids) for ids in rows]
        keys = np.concatenate(rows)
        if not len(keys):
            return keys, np.zeros(0, dtype=np.float32), [0] * (len(texts) + 1)
        keys += np.repeat(np.arange(len(texts), dtype=np.intp) * len(self.vocab), lengths)
        keys.sort()
        keys, tf = self._runs(keys, max(lengths))
        row_of, idx = np.divmod(keys, len(self.vocab))
        val = self.idf.take(idx)
        if tf is not None:
            val *= tf
        squares = np.bincount(row_of, weights=val * val, minlength=len(texts))
        val *= (1.0 / np.sqrt(np.maximum(squares, 1e-30))).astype(np.float32)[row_of]
        bounds: list[int] = np.searchsorted(row_of, np.arange(len(texts) + 1)).tolist()
        return idx, val, bounds

    def _gram_ids(self, text: str) -> npt.NDArray[np.intp]:
        """The vocabulary ids of ``_ngrams(text)``, as often as each occurs, unsorted: a new array."""
        words = _words(text)
        parts: list[npt.NDArray[np.intp]] = []
        for word in words:
            known = self._word_ids.get(word)
            if known is None:
                known = np.array([i for g in _word_grams(word) if (i := self._index.get(g)) is not None],
                                 dtype=np.intp)
                if len(self._word_ids) >= WORD_CACHE:
                    self._word_ids.clear()
                self._word_ids[word] = known
            parts.append(known)
        if bigrams := [i for g in _bigrams(words) if (i := self._index.get(g)) is not None]:
            parts.append(np.array(bigrams, dtype=np.intp))
        # concatenate copies: the cached arrays are never sorted in place
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)

    @staticmethod
    def _runs(keys: npt.NDArray[np.intp], longest: int) -> tuple[npt.NDArray[np.intp], FloatArray | None]:
        """Sorted keys -> each distinct key and its sublinear tf, 1 + ln(count) (None: all once).
        `longest` bounds any count (the longest text's gram count)."""
        n = len(keys)
        first = np.empty(n, dtype=np.bool_)  # where each run of one key starts
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        distinct = keys[first]
        if len(distinct) == n:
            return distinct, None
        starts = first.nonzero()[0]
        counts = np.empty(len(starts), dtype=np.intp)
        np.subtract(starts[1:], starts[:-1], out=counts[:-1])
        counts[-1] = n - starts[-1]
        if longest < len(_SUBLINEAR_TF):
            return distinct, _SUBLINEAR_TF[counts]
        return distinct, (1.0 + np.log(counts)).astype(np.float32)

    def dense(self, texts: Sequence[str]) -> FloatArray:
        out = np.zeros((len(texts), len(self)), dtype=np.float32)
        for row, t in enumerate(texts):
            idx, val = self.sparse(t)
            out[row, idx] = val
        return out


class _Design:
    """Rows of features: a dense block and a sparse (COO) TF-IDF block after it.

    Training on a dense 1k x 9k TF-IDF matrix streams 40 MB per Adam step; the
    sparse block has ~100 non-zeros per row.
    """

    def __init__(self, dense: FloatArray, texts: Sequence[str], tfidf: Tfidf) -> None:
        self.dense = dense
        self.vocab = len(tfidf)
        rows, cols, vals = [], [], []
        for r, t in enumerate(texts):
            idx, val = tfidf.sparse(t)
            rows.append(np.full(len(idx), r, dtype=np.intp))
            cols.append(idx)
            vals.append(val)
        self.rows = np.concatenate(rows)
        self.cols = np.concatenate(cols)
        self.vals = np.concatenate(vals)

    @property
    def n(self) -> int:
        return int(self.dense.shape[0])

    @property
    def width(self) -> int:
        return int(self.dense.shape[1]) + self.vocab

    def take(self, which: npt.NDArray[np.intp]) -> _Design:
        out = object.__new__(_Design)
        out.dense = self.dense[which]
        out.vocab = self.vocab
        remap = np.full(self.n, -1, dtype=np.intp)
        remap[which] = np.arange(len(which))
        keep = remap[self.rows] >= 0
        out.rows, out.cols, out.vals = remap[self.rows[keep]], self.cols[keep], self.vals[keep]
        return out

    def matmul(self, w: FloatArray) -> FloatArray:
        d = self.dense.shape[1]
        z = self.dense @ w[:d]
        np.add.at(z, self.rows, self.vals[:, None] * w[d:][self.cols])
        return z

    def rmatmul(self, g: FloatArray) -> FloatArray:
        """X.T @ g without building X."""
        d = self.dense.shape[1]
        out = np.empty((self.width, g.shape[1]), dtype=np.float32)
        out[:d] = self.dense.T @ g
        for c in range(g.shape[1]):
            out[d:, c] = np.bincount(self.cols, weights=self.vals * g[self.rows, c],
                                     minlength=self.vocab)
        return out


def _context(ex: IntentExample) -> FloatArray:
    return np.array([ex.has_working_image, ex.has_uploaded_images, ex.has_mentions],
                    dtype=np.float32)


def _context_flags(ex: IntentExample) -> int:
    """`_context(ex)` as three bits (working image 1, uploaded images 2, mentions 4)."""
    return ex.has_working_image | ex.has_uploaded_images << 1 | ex.has_mentions << 2


def _context_biases(bias: FloatArray, weights: FloatArray) -> FloatArray:
    """The bias plus the context features' share of the logits: row `f` for `_context_flags` f."""
    flags = np.array([[f >> i & 1 for i in range(CONTEXT_FEATURES)] for f in range(1 << CONTEXT_FEATURES)],
                     dtype=np.float32)
    out: FloatArray = bias + flags @ weights
    return out


# --- the head ----------------------------------------------------------------

def _calibrated(logits: FloatArray, temperature: float) -> list[float]:
    """softmax(logits / temperature) of one prompt, in plain Python: for nine numbers NumPy's
    per-call overhead is most of the cost (~13 us against ~4)."""
    z = logits.tolist()
    top, scale = max(z), 1.0 / temperature
    e = [math.exp((v - top) * scale) for v in z]
    total = sum(e)
    return [v / total for v in e]


def _softmax(z: FloatArray) -> FloatArray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def _fit_logreg(x: _Design, y: npt.NDArray[np.intp], k: int) -> tuple[FloatArray, FloatArray]:
    """Multinomial logistic regression, L2-penalised, full-batch Adam."""
    n, d = x.n, x.width
    w = np.zeros((d, k), dtype=np.float32)
    b = np.zeros(k, dtype=np.float32)
    onehot = np.eye(k, dtype=np.float32)[y]
    mw, vw = np.zeros_like(w), np.zeros_like(w)
    mb, vb = np.zeros_like(b), np.zeros_like(b)
    for step in range(1, ADAM_STEPS + 1):
        g = ((_softmax(x.matmul(w) + b) - onehot) / n).astype(np.float32)
        gw = x.rmatmul(g) + L2 * w
        gb = g.sum(axis=0)
        c1, c2 = 1 - 0.9 ** step, 1 - 0.999 ** step
        for p, grad, m, v in ((w, gw, mw, vw), (b, gb, mb, vb)):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            p -= ADAM_LR * (m / c1) / (np.sqrt(v / c2) + 1e-8)
    return w, b


def _fit_temperature(logits: FloatArray, y: npt.NDArray[np.intp]) -> float:
    """Temperature minimising NLL of out-of-fold logits (grid search is enough: 1-D)."""
    best_t, best_nll = 1.0, math.inf
    for t in np.exp(np.linspace(math.log(0.05), math.log(5.0), 120)):
        p = _softmax(logits / t)
        nll = -float(np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def expected_calibration_error(conf: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE with equal-width confidence bins: sum over bins of |acc - conf| * share."""
    c = np.asarray(conf, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if len(c) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(c, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += abs(float(ok[sel].mean()) - float(c[sel].mean())) * float(sel.mean())
    return ece


# --- the model ---------------------------------------------------------------

class FastTier(NamedTuple):
    """The fast tier's answer for one prompt, with the features the slow tier reuses."""

    probs: list[float]  # calibrated, in `IntentModel.labels` order
    token_ids: list[int]
    static: FloatArray
    tfidf_index: npt.NDArray[np.intp]
    tfidf_values: FloatArray
    context: int  # `_context_flags`

    def confident(self, escalate_below: float) -> bool:
        return max(self.probs) >= escalate_below


class IntentModel:
    """Two-tier head over static+TF-IDF (fast) and MiniLM (slow) features."""

    def __init__(self, *, labels: list[str], encoder: SentenceEncoder, static: StaticEncoder,
                 tfidf: Tfidf, fast: tuple[FloatArray, FloatArray, float],
                 full: tuple[FloatArray, FloatArray, float], meta: dict[str, object]) -> None:
        self.labels = labels
        self.encoder = encoder
        self.static = static
        self.tfidf = tfidf
        self._fast_w, self._fast_b, self._fast_t = fast
        self._full_w, self._full_b, self._full_t = full
        self.meta = meta
        self._token_ids = WordCachedTokenizer(encoder.tokenizer, max_length=MAX_SEQ_LENGTH).ids
        s, c, e = static.dim, CONTEXT_FEATURES, encoder.dim
        # Row blocks of the weight matrices (layout [static, context, tfidf] and
        # [minilm, static, context, tfidf]), so inference never builds the
        # mostly-zero dense TF-IDF vector; the three context flags take one of 8 biases.
        self._fast_blocks = (self._fast_w[:s], self._fast_w[s + c:])
        self._full_blocks = (self._full_w[:e], self._full_w[e:e + s], self._full_w[e + s + c:])
        self._fast_biases = _context_biases(self._fast_b, self._fast_w[s:s + c])
        self._full_biases = _context_biases(self._full_b, self._full_w[e + s:e + s + c])

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", "unknown"))

    def predict_fast(self, ex: IntentExample) -> FastTier:
        """The fast tier's calibrated probabilities, and the features the slow tier reuses.

        This runs on the event loop for every cache miss, so it is written for few NumPy calls
        (each costs microseconds whatever its size): `np.dot` rather than `@` on vectors, `take`
        rather than fancy indexing, the context as a precomputed bias, the softmax in Python.
        """
        ids = self._token_ids(ex.prompt)
        st = self.static.encode_ids(ids)
        idx, val = self.tfidf.sparse(ex.prompt)
        flags = _context_flags(ex)
        ws, wt = self._fast_blocks
        z = np.dot(st, ws) + np.dot(val, wt.take(idx, axis=0)) + self._fast_biases[flags]
        return FastTier(_calibrated(z, self._fast_t), ids, st, idx, val, flags)

    def predict_fast_many(self, examples: Sequence[IntentExample]) -> list[FastTier]:
        """`predict_fast` of each example, batched: under load the event loop has many cache misses
        ready at once, and per call overhead, not arithmetic, is most of one prompt's cost, so the
        gathers, the TF-IDF count and the head run once a batch (only the sums run per prompt).
        Agrees with `predict_fast` to float32 rounding."""
        if len(examples) == 1:
            return [self.predict_fast(examples[0])]
        texts = [ex.prompt for ex in examples]
        ids = [self._token_ids(text) for text in texts]
        st = self.static.encode_many_ids(ids)
        idx, val, bounds = self.tfidf.sparse_many(texts)
        flags = [_context_flags(ex) for ex in examples]
        ws, wt = self._fast_blocks
        z = st @ ws
        # Each prompt's TF-IDF logits as `predict_fast` computes them: a dot per prompt beat
        # one broadcast multiply and `np.add.reduceat` over the batch (~10 us against ~17 for 8).
        spans = list(itertools.pairwise(bounds))  # each prompt's [a:b] of idx and val
        rows = wt.take(idx, axis=0)
        for out, (a, b) in zip(z, spans, strict=True):
            out += np.dot(val[a:b], rows[a:b])
        z += self._fast_biases.take(flags, axis=0)
        probs = _softmax(z / np.float32(self._fast_t)).tolist()
        return [FastTier(p, i, s, idx[a:b], val[a:b], f)
                for p, i, s, (a, b), f in zip(probs, ids, st, spans, flags, strict=True)]

    def predict_full(self, fast: FastTier, embedding: FloatArray) -> list[float]:
        """The slow tier's calibrated probabilities, given the prompt's MiniLM embedding."""
        we, ws, wt = self._full_blocks
        z = (np.dot(embedding, we) + np.dot(fast.static, ws)
             + np.dot(fast.tfidf_values, wt.take(fast.tfidf_index, axis=0)) + self._full_biases[fast.context])
        return _calibrated(z, self._full_t)

    def predict_one(self, ex: IntentExample, *, escalate_below: float) -> tuple[list[float], bool]:
        """Calibrated class probabilities and whether the transformer tier ran."""
        fast = self.predict_fast(ex)
        if fast.confident(escalate_below):
            return fast.probs, False
        return self.predict_full(fast, self.encoder.encode_token_ids([fast.token_ids])[0]), True

    def predict_proba(self, examples: Sequence[IntentExample], *,
                      escalate_below: float) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Batch version of ``predict_one``: the transformer runs batched on escalations."""
        texts = [e.prompt for e in examples]
        ids = self.encoder.token_ids(texts)
        st = self.static.encode_batch_ids(ids)
        tf = self.tfidf.dense(texts)
        ctx = np.stack([_context(e) for e in examples])
        p = _softmax((np.hstack([st, ctx, tf]) @ self._fast_w + self._fast_b) / self._fast_t)
        esc = p.max(axis=1) < escalate_below
        if esc.any():
            rows = np.flatnonzero(esc)
            emb = self.encoder.encode([texts[i] for i in rows])
            x = np.hstack([emb, st[rows], ctx[rows], tf[rows]])
            p[rows] = _softmax((x @ self._full_w + self._full_b) / self._full_t)
        return p, esc

    # --- persistence ---

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            labels=np.array(self.labels),
            static_table=self.static.table.astype(np.float16),
            tfidf_vocab=np.array(self.tfidf.vocab),
            tfidf_idf=self.tfidf.idf,
            fast_w=self._fast_w, fast_b=self._fast_b, fast_t=np.float32(self._fast_t),
            full_w=self._full_w, full_b=self._full_b, full_t=np.float32(self._full_t),
            meta=np.array(json.dumps(self.meta)),
        )
        tmp.replace(path)  # atomic: a crashed build never leaves half an artifact

    @property
    def static_table(self) -> FloatArray:
        return self.static._table

    @classmethod
    def load(cls, path: Path, encoder: SentenceEncoder | None = None) -> IntentModel:
        encoder = encoder or MiniLMEncoder()
        with np.load(path, allow_pickle=False) as z:
            # float16 on disk halves the file; float32 in memory keeps lookups fast.
            static = StaticEncoder(z["static_table"].astype(np.float32), encoder.tokenizer)
            return cls(
                labels=[str(s) for s in z["labels"]], encoder=encoder, static=static,
                tfidf=Tfidf([str(s) for s in z["tfidf_vocab"]], z["tfidf_idf"]),
                fast=(z["fast_w"], z["fast_b"], float(z["fast_t"])),
                full=(z["full_w"], z["full_b"], float(z["full_t"])),
                meta=json.loads(str(z["meta"])),
            )


# --- training ----------------------------------------------------------------

class TrainReport(msgspec.Struct, frozen=True):
    n: int
    seconds: float
    distill_seconds: float
    cv_accuracy_fast: float
    cv_accuracy_full: float
    cv_accuracy_cascade: float
    cv_escalation_rate: float
    cv_ece: float
    temperature_fast: float
    temperature_full: float


def _cv_logits(x: _Design, y: npt.NDArray[np.intp], k: int, *, scored: _Design | None = None) -> FloatArray:
    """Out-of-fold logits: every row scored by a head that never saw it.

    `scored`: the same rows with the features serving computes (int8 MiniLM embeddings, say),
    when they differ from the ones the heads are trained on.
    """
    scored = x if scored is None else scored
    order = np.random.default_rng(0).permutation(len(y))
    out = np.zeros((len(y), k), dtype=np.float32)
    for f in range(CV_FOLDS):
        test = np.sort(order[f::CV_FOLDS])
        train = np.setdiff1d(order, test)
        w, b = _fit_logreg(x.take(train), y[train], k)
        out[test] = scored.take(test).matmul(w) + b
    return out


def static_table_path() -> Path:
    return ARTIFACT_DIR / f"static-{STATIC_TABLE_ID}.npz"


def _static_table(encoder: MiniLMEncoder) -> FloatArray:
    """The distilled table, cached: it depends on the MiniLM weights only, not on the data,
    so retraining after a data change skips the slow part (~1.5 min on 2 idle cores)."""
    path = static_table_path()
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["table"], dtype=np.float32)
    log.info("distilling the static embedding table from MiniLM (%d tokens)", encoder.vocab_size)
    table = distill_static_table(encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, table=table.astype(np.float16))
    tmp.replace(path)
    return table


def _data_fingerprint(examples: Sequence[IntentExample]) -> str:
    blob = msgspec.json.encode(list(examples))
    return hashlib.sha256(blob + ARTIFACT_VERSION.encode()).hexdigest()[:12]


def train_model(examples: Sequence[IntentExample], labels: Sequence[str], *,
                encoder: MiniLMEncoder | None = None,
                static_table: FloatArray | None = None) -> tuple[IntentModel, TrainReport]:
    """Fit both tiers, calibrate each by temperature on 5-fold out-of-fold logits."""
    start = time.perf_counter()
    encoder = encoder or MiniLMEncoder()
    label_list = list(labels)
    y = np.array([label_list.index(str(e.label)) for e in examples], dtype=np.intp)
    k = len(label_list)
    t0 = time.perf_counter()
    if static_table is None:
        static_table = _static_table(encoder)
    distill_s = time.perf_counter() - t0
    # The saved table is float16: train on the same rounding the server will see.
    static = StaticEncoder(static_table.astype(np.float16).astype(np.float32), encoder.tokenizer)
    texts = [e.prompt for e in examples]
    ids = encoder.token_ids(texts)
    tfidf = Tfidf.fit(texts)
    fast_dense = np.hstack([static.encode_batch_ids(ids), np.stack([_context(e) for e in examples])])
    x_fast = _Design(fast_dense, texts, tfidf)
    x_full = _Design(np.hstack([encoder.encode(texts), fast_dense]), texts, tfidf)
    log.info("features: fast %d, full %d", x_fast.width, x_full.width)

    cv_fast = _cv_logits(x_fast, y, k)
    cv_full = _cv_logits(x_full, y, k)
    t_fast = _fit_temperature(cv_fast, y)
    t_full = _fit_temperature(cv_full, y)
    p_fast = _softmax(cv_fast / t_fast)
    p_full = _softmax(cv_full / t_full)
    esc = p_fast.max(axis=1) < DEFAULT_ESCALATE_BELOW
    p_casc = np.where(esc[:, None], p_full, p_fast)
    pred = p_casc.argmax(axis=1)

    fast = (*_fit_logreg(x_fast, y, k), t_fast)
    full = (*_fit_logreg(x_full, y, k), t_full)
    seconds = time.perf_counter() - start
    report = TrainReport(
        n=len(y), seconds=round(seconds, 2), distill_seconds=round(distill_s, 2),
        cv_accuracy_fast=float((p_fast.argmax(1) == y).mean()),
        cv_accuracy_full=float((p_full.argmax(1) == y).mean()),
        cv_accuracy_cascade=float((pred == y).mean()),
        cv_escalation_rate=float(esc.mean()),
        cv_ece=expected_calibration_error(p_casc.max(axis=1).tolist(), (pred == y).tolist()),
        temperature_fast=t_fast, temperature_full=t_full,
    )
    meta: dict[str, object] = {
        "artifact_version": ARTIFACT_VERSION,
        "fingerprint": _data_fingerprint(examples),
        "escalate_below": DEFAULT_ESCALATE_BELOW,
        "train": msgspec.to_builtins(report),
    }
    model = IntentModel(labels=label_list, encoder=encoder, static=static, tfidf=tfidf,
                        fast=fast, full=full, meta=meta)
    return model, report
