"""MiniLM in NumPy (packed batches) and on ONNX Runtime (padded batches): the same embeddings;
with int8 weights, nearly the same."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.encoder import MiniLMEncoder
from pipeline.encoder_onnx import OnnxMiniLMEncoder, _exact_signed_products

TEXTS = ["a cat", "animate this sunset", "animate this sunrise", "cinematic video of waves with ocean sounds",
         "sharpen it"]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_a_packed_batch_of_mixed_lengths_matches_each_sentence_alone(encoder: MiniLMEncoder) -> None:
    """Sentences of different lengths share the weight matmuls but never each other's attention."""
    ids = encoder.token_ids(TEXTS)
    lengths = {len(i) for i in ids}
    assert 2 < len(lengths) < len(ids)  # lengths differ, and some sentences share one
    batch = encoder.encode_token_ids(ids)
    alone = np.stack([encoder.encode_token_ids([i])[0] for i in ids])
    assert batch.shape == (len(TEXTS), encoder.dim)
    assert np.abs(batch - alone).max() < 1e-5
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # and the sentences are told apart: no two share an embedding
    similarity = batch @ batch.T
    assert (similarity[~np.eye(len(TEXTS), dtype=bool)] < 0.999).all()


def test_encode_keeps_the_callers_order(encoder: MiniLMEncoder) -> None:
    """`encode` sorts by length inside; its rows come back in the order of the texts."""
    texts = ["cinematic video of waves with ocean sounds", "a cat", "sharpen it"]
    rows = encoder.encode(texts, batch_size=2)
    for text, row in zip(texts, rows, strict=True):
        assert np.abs(row - encoder.encode_token_ids(encoder.token_ids([text]))[0]).max() < 1e-5


def test_onnx_runtime_gives_the_numpy_embeddings(encoder: MiniLMEncoder) -> None:
    """The graph written from the NumPy encoder's arrays computes what NumPy does, padded or alone."""
    onnx = OnnxMiniLMEncoder(encoder)
    ids = encoder.token_ids(TEXTS)
    reference = encoder.encode_token_ids(ids)
    assert np.abs(onnx.encode_token_ids(ids) - reference).max() < 1e-5  # one padded batch
    alone = np.stack([onnx.encode_token_ids([i])[0] for i in ids])
    assert np.abs(alone - reference).max() < 1e-5
    assert np.abs(onnx.encode(list(reversed(TEXTS)), batch_size=2) - reference[::-1]).max() < 1e-5
    assert onnx.dim == encoder.dim and onnx.tokenizer is encoder.tokenizer


def test_int8_weights_keep_each_embedding_close_to_the_float_one(encoder: MiniLMEncoder) -> None:
    """8-bit weights and activations move embeddings a little, never to another sentence's."""
    int8 = OnnxMiniLMEncoder(encoder, int8=True)
    assert int8.precision == "int8" and OnnxMiniLMEncoder(encoder).precision == "float32"
    ids = encoder.token_ids(TEXTS)
    reference = encoder.encode_token_ids(ids)
    quantized = int8.encode_token_ids(ids)
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-5)
    cosine = quantized @ reference.T
    assert np.diag(cosine).min() > 0.98  # measured >= 0.988 over 64 load-test prompts
    assert 1e-4 < np.abs(quantized - reference).max() < 0.05  # quantized for real, and close
    assert (cosine.argmax(axis=1) == np.arange(len(TEXTS))).all()
    # Activations share one scale per run: each prompt runs alone, so its batch mates (and
    # their padding) never change its embedding.
    alone = np.stack([int8.encode_token_ids([i])[0] for i in ids])
    assert np.array_equal(alone, quantized)
    assert np.array_equal(int8.encode_token_ids(ids[::-1]), quantized[::-1])


@pytest.mark.skipif(not _exact_signed_products(), reason="signed 8-bit products can saturate on this CPU")
def test_signed_and_unsigned_int8_weights_give_the_same_embeddings(
    encoder: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two weight encodings are one algebra: where signed products are exact, they agree."""
    ids = encoder.token_ids(TEXTS)
    signed = OnnxMiniLMEncoder(encoder, int8=True).encode_token_ids(ids)
    monkeypatch.setattr("pipeline.encoder_onnx._exact_signed_products", lambda: False)
    unsigned = OnnxMiniLMEncoder(encoder, int8=True).encode_token_ids(ids)
    assert np.abs(signed - unsigned).max() < 1e-5
