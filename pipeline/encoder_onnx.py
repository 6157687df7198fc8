"""The same all-MiniLM-L6-v2 forward pass, run by ONNX Runtime instead of NumPy.

For the short prompts the classifier escalates (10-20 tokens), the forward pass is 24 small
matrix products per prompt, where OpenBLAS reaches a third of what the core can do and NumPy
adds a call per operation. ONNX Runtime's kernels do the same products in about half the time
(24 products of a 14-token prompt: 3.9 vs 7.5 ms, one thread) and fuse the element-wise steps.

The graph is written here, node by node, from `MiniLMEncoder`'s own arrays when the encoder is
loaded: no exported model file to keep in step with the weights or the code, and the NumPy
encoder stays the reference it is tested against (embeddings agree within 1e-5).

With ``int8=True`` (what serving uses) every linear layer's weights are quantized to 8 bits,
one scale per output column, and ONNX Runtime quantizes each call's activations to 8 bits
too (DynamicQuantizeMatMul): a prompt costs ~1.5 ms instead of ~4.4 (~2.8 per prompt in a
float batch of 8; int8 runs prompts one at a time, see `encode_token_ids`). Embeddings move
by up to ~0.03 (cosine >= 0.98 to the float ones); the classifier's 5-fold CV accuracy with
its float-trained heads is unchanged (0.9551 either way: scripts/escalation_cv.py).
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from pipeline.encoder import (
    HEAD_DIM,
    HEADS,
    HIDDEN,
    LN_EPS,
    FloatArray,
    Layer,
    MiniLMEncoder,
    encode_by_length,
)

__all__ = ["OnnxMiniLMEncoder"]

OPSET = 17  # LayerNormalization
IR_VERSION = 9  # what onnxruntime 1.2x reads; the onnx package may write newer by default
CONTRIB = "com.microsoft"  # ONNX Runtime's own operators: DynamicQuantizeMatMul


class OnnxMiniLMEncoder:
    """Sentence embeddings from MiniLM on ONNX Runtime, one thread; the tokenizer is NumPy's."""

    def __init__(self, encoder: MiniLMEncoder, *, int8: bool = False) -> None:
        self._encoder = encoder
        self.precision = "int8" if int8 else "float32"
        options = ort.SessionOptions()
        # One thread, like BLAS in `python -m gateway`: more would only fight the event loop.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initializers etc. are not ours
        builder = _Builder(int8=int8, signed_int8=int8 and _exact_signed_products())
        model = _graph(builder, encoder)
        # The weights stay NumPy's: handed over by reference, not serialized into the graph, so
        # they are kept alive here for as long as the session reads them.
        self._weights = [ort.OrtValue.ortvalue_from_numpy(w) for w in builder.weights.values()]
        options.add_external_initializers(list(builder.weights), self._weights)
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    @property
    def dim(self) -> int:
        return HIDDEN

    @property
    def tokenizer(self) -> Tokenizer:
        return self._encoder.tokenizer

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return self._encoder.token_ids(texts)

    def encode_token_ids(self, batch: list[list[int]]) -> FloatArray:
        """Embed already-tokenized inputs: one padded batch in float32, one by one in int8.

        int8 activations share one scale per call, taken over the whole batch (padding too): a
        prompt's embedding, and so its answer, would depend on its batch mates. Alone, it is a
        function of the prompt; and an int8 batch of 8 saved only ~4% per prompt anyway.
        """
        if self.precision == "int8" and len(batch) > 1:
            return np.concatenate([self._run([sentence]) for sentence in batch])
        return self._run(batch)

    def _run(self, batch: list[list[int]]) -> FloatArray:
        n = max(len(ids) for ids in batch)
        ids = np.zeros((len(batch), n), dtype=np.int64)
        mask = np.zeros((len(batch), n), dtype=np.float32)
        for row, sentence in enumerate(batch):
            ids[row, :len(sentence)] = sentence
            mask[row, :len(sentence)] = 1.0
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        (hidden,) = self._session.run(
            None, {"input_ids": ids, "positions": np.arange(n, dtype=np.int64), "attention_bias": bias}
        )
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: FloatArray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return out

    def encode(self, texts: list[str], *, batch_size: int = 32) -> FloatArray:
        return encode_by_length(self, texts, batch_size)


class _Builder:
    """Nodes and initializers of one graph, with fresh names."""

    def __init__(self, *, int8: bool = False, signed_int8: bool = False) -> None:
        self.int8, self.signed_int8 = int8, signed_int8
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.weights: dict[str, np.ndarray] = {}
        self._consts: dict[tuple[str, tuple[int, ...], tuple[float, ...]], str] = {}

    def const(self, value: np.ndarray) -> str:
        """A small constant, stored in the graph once per dtype, shape and value."""
        key = (str(value.dtype), value.shape, tuple(value.ravel().tolist()))
        if key not in self._consts:
            self._consts[key] = name = f"const_{len(self._consts)}"
            self.initializers.append(numpy_helper.from_array(value, name))
        return self._consts[key]

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, dtype=np.float32))

    def weight(self, name: str, value: np.ndarray) -> str:
        """A weight array, declared in the graph and handed to the session by reference."""
        value = np.ascontiguousarray(value, dtype=np.float32 if value.dtype.kind == "f" else value.dtype)
        self.weights[name] = value
        # Declared with its data "external"; the session gets the array itself (no copy).
        tensor = TensorProto(name=name, dims=value.shape,
                             data_type=helper.np_dtype_to_tensor_dtype(value.dtype),
                             data_location=TensorProto.EXTERNAL)
        for key, text in (("location", name), ("offset", "0"), ("length", str(value.nbytes))):
            tensor.external_data.add(key=key, value=text)
        self.initializers.append(tensor)
        return name

    def op(self, kind: str, *inputs: str, **attributes: Any) -> str:
        out = f"{kind.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attributes))
        return out

    def layer_norm(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray) -> str:
        return self.op("LayerNormalization", x, self.weight(f"{name}_w", weight),
                       self.weight(f"{name}_b", bias), axis=-1, epsilon=LN_EPS)

    def linear(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray) -> str:
        if not self.int8:
            return self.op("Add", self.op("MatMul", x, self.weight(f"{name}_w", weight)),
                           self.weight(f"{name}_b", bias))
        # Symmetric, per output column: the largest weight of each column maps to +-127.
        scale = np.abs(weight).max(axis=0).astype(np.float32) / 127
        scale[scale == 0] = 1.0
        quantized = np.rint(weight / scale).astype(np.int8)
        zero_point = ""  # signed weights: zero is 0
        if not self.signed_int8:
            quantized = (quantized.astype(np.int16) + 128).astype(np.uint8)
            zero_point = self.const(np.full(scale.shape, 128, dtype=np.uint8))
        return self.op("DynamicQuantizeMatMul", x, self.weight(f"{name}_q", quantized),
                       self.weight(f"{name}_scale", scale), zero_point, self.weight(f"{name}_b", bias),
                       domain=CONTRIB)


def _graph(b: _Builder, encoder: MiniLMEncoder) -> onnx.ModelProto:
    embedded = b.op("Add", b.op("Gather", b.weight("word_embeddings", encoder.word_embeddings), "input_ids"),
                    b.op("Gather", b.weight("position_embeddings", encoder.position_embeddings), "positions"))
    x = b.layer_norm(embedded, "embeddings_ln", encoder.ln_w, encoder.ln_b)
    for i, layer in enumerate(encoder.layers):
        x = _layer(b, f"layer{i}", layer, x)
    graph = helper.make_graph(
        b.nodes,
        "minilm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("positions", TensorProto.INT64, ["seq"]),
            helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT, ["batch", 1, 1, "seq"]),
        ],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        b.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(CONTRIB, 1)] if b.int8 else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = IR_VERSION
    return model


def _layer(b: _Builder, name: str, layer: Layer, x: str) -> str:
    """One transformer layer: the algebra of `Layer.forward`, on a padded batch."""
    qkv = b.linear(x, f"{name}_qkv", layer.qkv_w, layer.qkv_b)
    qkv = b.op("Reshape", qkv, b.const(np.array([0, 0, 3, HEADS, HEAD_DIM], dtype=np.int64)))
    qkv = b.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # (3, batch, heads, seq, dim)
    q, k, v = (b.op("Gather", qkv, b.const(np.array(i, dtype=np.int64)), axis=0) for i in range(3))
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])),
                  b.scalar(1.0 / math.sqrt(HEAD_DIM)))
    probs = b.op("Softmax", b.op("Add", scores, "attention_bias"), axis=-1)
    ctx = b.op("Transpose", b.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", ctx, b.const(np.array([0, 0, HIDDEN], dtype=np.int64)))
    h = b.layer_norm(b.op("Add", x, b.linear(ctx, f"{name}_out", layer.out_w, layer.out_b)),
                     f"{name}_ln1", layer.ln1_w, layer.ln1_b)
    up = b.linear(h, f"{name}_up", layer.up_w, layer.up_b)
    # exact GELU, 0.5 * u * (1 + erf(u / sqrt 2)): onnxruntime fuses the pattern into one kernel
    erf = b.op("Erf", b.op("Mul", up, b.scalar(1.0 / math.sqrt(2.0))))
    gelu = b.op("Mul", b.op("Mul", up, b.scalar(0.5)), b.op("Add", b.scalar(1.0), erf))
    down = b.linear(gelu, f"{name}_down", layer.down_w, layer.down_b)
    return b.layer_norm(b.op("Add", h, down), f"{name}_ln2", layer.ln2_w, layer.ln2_b)


def _exact_signed_products() -> bool:
    """Whether ONNX Runtime multiplies 8-bit activations by signed 8-bit weights exactly here.

    It does with VNNI (one instruction sums four products into 32 bits). Without it, x86 sums
    pairs of products in 16 bits, which can saturate; unsigned weights (offset by 128) take a
    kernel that widens first: exact everywhere, ~40% slower per prompt on a VNNI machine.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "").split()
    return "avx512_vnni" in flags or "avx_vnni" in flags
