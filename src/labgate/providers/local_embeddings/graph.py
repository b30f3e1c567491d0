"""Build a BERT sentence-embedding ONNX graph from safetensors, without torch.

Inputs ``input_ids`` and ``attention_mask`` (int64, [batch, seq]); output
``embedding`` (float32, [batch, hidden]): embeddings → LayerNorm → N encoder
layers (self-attention with the padding mask, exact-erf GELU, post-LN) →
mean or CLS pooling → optional L2 normalization. Token type ids are always 0
(single sentences), so their embedding is folded in as a constant.

The graph is built once per weights file and cached under the data
directory, keyed by a hash of the weights, the model's settings and
:data:`BUILDER_VERSION` (bump it whenever the graph this module emits changes).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from labgate.providers.local_embeddings.weights import ModelSpec

BUILDER_VERSION = "1"
OPSET = 17  # LayerNormalization
IR_VERSION = 8
MASK_BIAS = -1.0e4  # added to the attention scores of padding; exp() of it is exactly 0 in float32
_CHUNK = 1 << 20


def cache_key(spec: ModelSpec) -> str:
    """A hash of the weights file, the settings that shape the graph, and the builder version."""
    digest = hashlib.sha256()
    digest.update(f"{BUILDER_VERSION}|{spec.pooling}|{spec.normalize}|{spec.layer_norm_eps}|".encode())
    digest.update((spec.directory / "config.json").read_bytes())
    with open(spec.safetensors, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()[:24]


def cached_graph(spec: ModelSpec, cache_dir: Path) -> tuple[Path, bool]:
    """The ONNX file for ``spec``, built now if the cache lacks it; and whether it was built."""
    path = cache_dir / f"{_safe(spec.name)}-{cache_key(spec)}.onnx"
    if path.is_file():
        return path, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = build_graph(spec).SerializeToString()
    # write then rename: a concurrent builder (another worker process) never sees half a file
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".building-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path, True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


def load_tensors(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 numpy arrays, names without a ``bert.`` prefix."""
    import numpy as np
    from safetensors.numpy import load_file

    tensors = load_file(str(spec.safetensors))
    out = {}
    for name, value in tensors.items():
        key = name.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight")
        key = key.replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return out


class _Graph:
    """Accumulates nodes and initializers; each op returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0
        self._consts: set[str] = set()

    def const(self, name: str, value: Any) -> str:
        """An initializer; a name already defined is reused (shared scalars)."""
        from onnx import numpy_helper

        if name not in self._consts:
            self._consts.add(name)
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, kind: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        out = f"{kind.lower()}_{self._n}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
        # torch stores [out, in]; MatMul wants [in, out]
        import numpy as np

        w = self.const(f"{name}.wT", np.ascontiguousarray(weight.T))
        return self.op("Add", self.op("MatMul", x, w), self.const(f"{name}.b", bias))

    def layer_norm(self, x: str, tensors: dict[str, np.ndarray], prefix: str, eps: float) -> str:
        scale = self.const(f"{prefix}.weight", tensors[f"{prefix}.weight"])
        bias = self.const(f"{prefix}.bias", tensors[f"{prefix}.bias"])
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=eps)


def build_graph(spec: ModelSpec, tensors: dict[str, np.ndarray] | None = None) -> Any:
    """The ``onnx.ModelProto`` of ``spec``'s model (``tensors``: already loaded, else read from disk)."""
    import numpy as np
    from onnx import TensorProto, checker, helper

    t = load_tensors(spec) if tensors is None else tensors
    g = _Graph()
    hidden, heads = spec.hidden_size, spec.heads
    head_dim = hidden // heads
    i64 = np.int64
    # embeddings: word + position[:seq] + token_type[0]
    words = g.op("Gather", g.const("word_embeddings", t["embeddings.word_embeddings.weight"]), "input_ids")
    seq = g.op("Gather", g.op("Shape", "input_ids"), g.const("one_index", np.array([1], i64)), axis=0)
    positions = g.op("Slice", g.const("position_embeddings", t["embeddings.position_embeddings.weight"]),
                     g.const("zero_1d", np.array([0], i64)), seq, g.const("axis0", np.array([0], i64)))
    token_type = g.const("token_type_0", t["embeddings.token_type_embeddings.weight"][0])
    x = g.op("Add", g.op("Add", words, positions), token_type)
    x = g.layer_norm(x, t, "embeddings.LayerNorm", spec.layer_norm_eps)
    # the padding mask as an additive bias on the scores, [batch, 1, 1, seq]
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    bias = g.op("Mul", g.op("Sub", g.const("one_f", np.array(1.0, np.float32)), mask),
                g.const("mask_bias", np.array(MASK_BIAS, np.float32)))
    bias = g.op("Unsqueeze", bias, g.const("axes_1_2", np.array([1, 2], i64)))
    split = g.const("split_heads", np.array([0, 0, heads, head_dim], i64))
    merge = g.const("merge_heads", np.array([0, 0, hidden], i64))
    scale = g.const("attn_scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    for i in range(spec.layers):
        p = f"encoder.layer.{i}"
        q, k, v = (g.op("Reshape", g.linear(x, t[f"{p}.attention.self.{n}.weight"],
                                             t[f"{p}.attention.self.{n}.bias"], f"{p}.{n}"), split)
                   for n in ("query", "key", "value"))
        q = g.op("Transpose", q, perm=[0, 2, 1, 3])
        k = g.op("Transpose", k, perm=[0, 2, 3, 1])
        v = g.op("Transpose", v, perm=[0, 2, 1, 3])
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merge)
        attended = g.linear(context, t[f"{p}.attention.output.dense.weight"],
                            t[f"{p}.attention.output.dense.bias"], f"{p}.attn_out")
        x = g.layer_norm(g.op("Add", attended, x), t, f"{p}.attention.output.LayerNorm", spec.layer_norm_eps)
        inner = g.linear(x, t[f"{p}.intermediate.dense.weight"], t[f"{p}.intermediate.dense.bias"], f"{p}.ffn_in")
        inner = _gelu(g, inner)
        out = g.linear(inner, t[f"{p}.output.dense.weight"], t[f"{p}.output.dense.bias"], f"{p}.ffn_out")
        x = g.layer_norm(g.op("Add", out, x), t, f"{p}.output.LayerNorm", spec.layer_norm_eps)
    pooled = _pool(g, x, mask, spec.pooling)
    if spec.normalize:
        norm = g.op("ReduceL2", pooled, axes=[-1], keepdims=1)  # axes an attribute until opset 18
        pooled = g.op("Div", pooled, g.op("Max", norm, g.const("norm_eps", np.array(1e-12, np.float32))))
    g.nodes.append(helper.make_node("Identity", [pooled], ["embedding"]))
    graph = helper.make_graph(
        g.nodes, f"labgate-{_safe(spec.name)}",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="labgate", producer_version=BUILDER_VERSION)
    model.ir_version = IR_VERSION
    checker.check_model(model)
    return model


def _gelu(g: _Graph, x: str) -> str:
    """BERT's exact GELU: 0.5 · x · (1 + erf(x / √2))."""
    import numpy as np

    inner = g.op("Erf", g.op("Mul", x, g.const("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))))
    half = g.const("half_f", np.array(0.5, np.float32))
    one = g.const("one_f", np.array(1.0, np.float32))
    return g.op("Mul", g.op("Mul", x, half), g.op("Add", inner, one))


def _pool(g: _Graph, x: str, mask: str, pooling: str) -> str:
    import numpy as np

    if pooling == "cls":
        return g.op("Gather", x, g.const("cls_index", np.array(0, np.int64)), axis=1)
    # mean over the real tokens: sum(x · mask) / max(sum(mask), 1e-9), as sentence-transformers does
    weights = g.op("Unsqueeze", mask, g.const("axes_last_u", np.array([-1], np.int64)))
    axis1 = g.const("axes_seq", np.array([1], np.int64))
    total = g.op("ReduceSum", g.op("Mul", x, weights), axis1, keepdims=0)
    count = g.op("Max", g.op("ReduceSum", weights, axis1, keepdims=0),
                 g.const("count_eps", np.array(1e-9, np.float32)))
    return g.op("Div", total, count)
