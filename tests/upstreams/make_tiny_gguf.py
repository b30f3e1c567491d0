"""Write a tiny, deterministic, random-weight llama GGUF for integration tests.

The file (~0.5 MB, F32) is loadable by llama.cpp's server and has:

* arch ``llama``: 2 layers, n_embd 64, 4 heads (2 KV heads), n_ff 128, context 2048;
* an SPM (``llama``) tokenizer: ``<unk> <s> </s>``, the ChatML markers ``<|im_start|>`` /
  ``<|im_end|>`` as CONTROL tokens, 256 ``<0xNN>`` byte-fallback tokens, the printable ASCII
  characters (space spelled ``▁``), and ~25 whole words (``▁hello`` ...) together with every
  prefix (the SPM merger only joins two symbols when their concatenation is itself a token, so
  a word is reachable only through its whole prefix chain);
* a ChatML ``tokenizer.chat_template``; ``llama.pooling_type = MEAN`` (pooled ``/v1/embeddings``);
* a biased output head: every token embedding carries the same large value in dimension 0,
  and only whole-word rows of ``output.weight`` score positively on it. Therefore only whole
  words are ever sampled and EOS / ``<|im_end|>`` never are: every completion runs exactly to
  ``max_tokens`` with ``finish_reason: "length"``.

Byte-identical on every run (fixed seed, no timestamps). Usage::

    python tests/upstreams/make_tiny_gguf.py OUT.gguf

or ``from make_tiny_gguf import make_tiny_gguf; make_tiny_gguf(path)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

SEED = 20261123

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX_TRAIN = 2048
HEAD_DIM = N_EMBD // N_HEAD

SPACE = "\u2581"  # SentencePiece's "▁"

WORDS = (
    "hello", "world", "tiny", "blue", "red", "green", "dog", "cat", "fast", "slow",
    "model", "gateway", "test", "and", "the", "no", "yes", "big", "small", "sun",
    "moon", "code", "data", "lab", "gate",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# gguf.TokenType values (kept literal so the vocabulary can be built without importing gguf)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def build_vocab() -> tuple[list[str], list[float], list[int], set[int]]:
    """Return (tokens, scores, types, whole_word_ids)."""
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    index: dict[str, int] = {}

    def add(piece: str, score: float, ttype: int) -> int:
        if piece in index:
            return index[piece]
        index[piece] = len(tokens)
        tokens.append(piece)
        scores.append(score)
        types.append(ttype)
        return index[piece]

    add("<unk>", 0.0, _UNKNOWN)
    add("<s>", 0.0, _CONTROL)
    add("</s>", 0.0, _CONTROL)
    add("<|im_start|>", 0.0, _CONTROL)
    add("<|im_end|>", 0.0, _CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, _BYTE)
    for c in range(32, 127):
        add(SPACE if c == 32 else chr(c), -1.0, _NORMAL)
    whole: set[int] = set()
    for word in WORDS:
        piece = SPACE + word
        for n in range(2, len(piece) + 1):
            tid = add(piece[:n], float(n), _NORMAL)  # longer pieces merge first
        whole.add(tid)
    return tokens, scores, types, whole


def _weights(n_vocab: int, whole: set[int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t: dict[str, np.ndarray] = {}
    # Token embeddings: a constant 1.0 in dimension 0 dominates the residual stream,
    # the other dimensions carry small per-token noise (that is what varies the output).
    embd = normal((n_vocab, N_EMBD), 0.1)
    embd[:, 0] = 1.0
    t["token_embd.weight"] = embd
    small = 0.02
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        t[p + "attn_q.weight"] = normal((N_HEAD * HEAD_DIM, N_EMBD), small)
        t[p + "attn_k.weight"] = normal((N_HEAD_KV * HEAD_DIM, N_EMBD), small)
        t[p + "attn_v.weight"] = normal((N_HEAD_KV * HEAD_DIM, N_EMBD), small)
        t[p + "attn_output.weight"] = normal((N_EMBD, N_HEAD * HEAD_DIM), small)
        t[p + "ffn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        t[p + "ffn_gate.weight"] = normal((N_FF, N_EMBD), small)
        t[p + "ffn_up.weight"] = normal((N_FF, N_EMBD), small)
        t[p + "ffn_down.weight"] = normal((N_EMBD, N_FF), small)
    t["output_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
    # Output head: column 0 (the constant dimension) gives whole words +10 and every other
    # token (control, EOS, bytes, characters, prefixes) -10: after RMS norm that dimension is
    # ~6, i.e. a logit gap of ~120 that the noise in the other columns (std ~2.5) cannot close.
    out = normal((n_vocab, N_EMBD), 0.5)
    bias = np.full(n_vocab, -10.0, dtype=np.float32)
    bias[sorted(whole)] = 10.0
    out[:, 0] = bias
    t["output.weight"] = out
    return t


def make_tiny_gguf(path: str | os.PathLike[str]) -> Path:
    """Write the tiny model to ``path`` (overwriting it) and return the path."""
    import gguf  # imported here so build_vocab() works without gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types, whole = build_vocab()

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name("labgate-tiny-llama")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_eot_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    for name, arr in _weights(len(tokens), whole).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written file
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .gguf path")
    args = ap.parse_args(argv)
    out = make_tiny_gguf(args.out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
