"""RWKV-7 "Goose" engine: config, weights, state, forward.

Checkpoints: config.json with ``model_type: "rwkv7"`` (hidden_size, num_hidden_layers,
head_size, vocab_size, intermediate_size) and safetensors in the RWKV-LM tensor naming
(``emb.weight``, ``blocks.<l>.att.*``, ``blocks.<l>.ffn.*``, ``ln_out.*``, ``head.weight``;
random_recurrent.py writes such folders). The block, from the RWKV-7 paper / RWKV-LM's
reference (float32; H heads of N channels, D = H N):

    h = embed[ids] ; h = layernorm(h, ln0)                             (layer 0 only)
    time mixing, x = layernorm(h, ln1), d = x_prev - x (x_prev: the previous token's x):
      xr, xw, xk, xv, xa, xg = x + d * (x_r, x_w, x_k, x_v, x_a, x_g)
      r = W_r xr ; k = W_k xk ; v = W_v xv
      w = exp(-e^-0.5 sigmoid(w0 + W2 tanh(W1 xw)))                    (decay in (0, 1))
      a = sigmoid(a0 + A2 A1 xa) ; g = G2 sigmoid(G1 xg)
      kk = normalize_per_head(k * k_k) ; k = k * (1 + (a - 1) * k_a)
      v = v (layer 0: v_first = v) or v + (v_first - v) * sigmoid(v0 + V2 V1 xv)
      per head: S = S diag(w) + (S (-kk)) (kk * a)^T + v k^T ; y = S r
      y = groupnorm_per_head(y; ln_x, eps 64e-5) + (sum_j r k r_k) v    (per head)
      h = h + W_o (y * g)
    channel mixing, x = layernorm(h, ln2): h = h + W_v' relu(W_k' (x + (x_prev - x) x_k'))^2
    logits = layernorm(h, ln_out) @ head^T

State per layer: the two token-shift vectors [D] and S [H, N, N].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ryzjupyter.engine.checkpoint import CheckpointError, detect_kind
from ryzjupyter.engine.profiling import PROFILER
from ryzjupyter.families.head_and_state import head_nbytes, layer_state, lm_head
from ryzjupyter.families.recurrent import K, Linear, RecurrentModel, check_float, config_int
from ryzjupyter.families.rwkv import layernorm, shifted, sigmoid

DECAY_SCALE = np.float32(0.606531)          # e^-0.5


@dataclass
class Config:
    dim: int
    n_layers: int
    vocab_size: int
    head_size: int
    d_ffn: int
    norm_eps: float
    gn_eps: float
    tied: bool
    max_context: int

    @property
    def n_heads(self):
        return self.dim // self.head_size

    @classmethod
    def from_dict(cls, cfg: dict) -> "Config":
        fam = "RWKV-7"
        D = config_int(cfg, "hidden_size", family=fam)
        N = config_int(cfg, "head_size", 64, family=fam)
        if D % N:
            raise CheckpointError(f"config.json: hidden_size {D} is not a multiple of head_size {N}")
        return cls(dim=D, n_layers=config_int(cfg, "num_hidden_layers", family=fam),
                   vocab_size=config_int(cfg, "vocab_size", family=fam), head_size=N,
                   d_ffn=int(cfg.get("intermediate_size") or 4 * D),
                   norm_eps=float(cfg.get("norm_eps", 1e-5)), gn_eps=float(cfg.get("group_norm_eps", 64e-5)),
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   max_context=int(cfg.get("context_length") or 1 << 20))


def _vec(ck, name, D):
    """A [D] parameter stored as [D] or [1, 1, D]."""
    info = ck.index.get(name)
    shape = (1, 1, D) if info is not None and len(info.shape) == 3 else (D,)
    return check_float(ck, name, shape).reshape(D)


class LayerWeights:
    def __init__(self, ck, l, c: Config, fmt):
        D, F, H, N = c.dim, c.d_ffn, c.n_heads, c.head_size
        p, a, f = f"blocks.{l}.", f"blocks.{l}.att.", f"blocks.{l}.ffn."
        ln = lambda n: (check_float(ck, p + n + ".weight", (D,)), check_float(ck, p + n + ".bias", (D,)))  # noqa: E731
        self.ln0 = ln("ln0") if l == 0 else None
        self.ln1, self.ln2 = ln("ln1"), ln("ln2")
        self.mix = [_vec(ck, a + "x_" + n, D) for n in "rwkvag"]
        lin = lambda n, shape: Linear(check_float(ck, a + n, shape), None, fmt)  # noqa: E731

        def lora(n):
            w1 = ck.index.get(a + n + "1")
            r = w1.shape[1] if w1 is not None and len(w1.shape) == 2 else 1
            return (Linear(check_float(ck, a + n + "1", (D, r)).T, None, fmt),
                    Linear(check_float(ck, a + n + "2", (r, D)).T, None, fmt))
        self.w0, self.w_lora = _vec(ck, a + "w0", D), lora("w")
        self.a0, self.a_lora = _vec(ck, a + "a0", D), lora("a")
        self.v0, self.v_lora = (_vec(ck, a + "v0", D), lora("v")) if l > 0 else (None, None)
        self.g_lora = lora("g")
        self.k_k, self.k_a = _vec(ck, a + "k_k", D), _vec(ck, a + "k_a", D)
        self.r_k = check_float(ck, a + "r_k", (H, N)).reshape(D)
        self.receptance, self.key = lin("receptance.weight", (D, D)), lin("key.weight", (D, D))
        self.value, self.output = lin("value.weight", (D, D)), lin("output.weight", (D, D))
        self.ln_x = (check_float(ck, a + "ln_x.weight", (D,)), check_float(ck, a + "ln_x.bias", (D,)))
        self.ffn_mix = _vec(ck, f + "x_k", D)
        self.ffn_key = Linear(check_float(ck, f + "key.weight", (F, D)), None, fmt)
        self.ffn_value = Linear(check_float(ck, f + "value.weight", (D, F)), None, fmt)

    @property
    def nbytes(self):
        lins = [self.receptance, self.key, self.value, self.output, self.ffn_key, self.ffn_value,
                *self.w_lora, *self.a_lora, *self.g_lora, *(self.v_lora or ())]
        return sum(x.nbytes for x in lins) + 20 * self.w0.nbytes


def _lora(pair, x, act=None):
    """W2 act(W1 x) over the rows of x."""
    l1, l2 = pair
    t = l1(np.empty((x.shape[0], l1.n), np.float32), x)
    if act is not None:
        t = act(t)
    return l2(np.empty((x.shape[0], l2.n), np.float32), np.ascontiguousarray(t, dtype=np.float32))


def time_mixing(c: Config, lw: LayerWeights, x, st, v_first, l):
    """The attention of RWKV-7 over the chunk x [T, D]; st = (shift, S); returns (out, v_first)."""
    T, D, H, N = x.shape[0], c.dim, c.n_heads, c.head_size
    shift, S = st
    with PROFILER.phase("conv"):
        d = shifted(x, shift) - x
        xr, xw, xk, xv, xa, xg = (np.ascontiguousarray(x + d * m) for m in lw.mix)
    r = lw.receptance(np.empty((T, D), np.float32), xr)
    k = lw.key(np.empty((T, D), np.float32), xk)
    v = lw.value(np.empty((T, D), np.float32), xv)
    w = _lora(lw.w_lora, xw, np.tanh)
    a = sigmoid(lw.a0 + _lora(lw.a_lora, xa))
    g = _lora(lw.g_lora, xg, sigmoid)
    kk = (k * lw.k_k).reshape(T, H, N)
    kk = (kk / np.maximum(np.sqrt((kk * kk).sum(-1, keepdims=True)), np.float32(1e-12))).reshape(T, D)
    k = k * (1 + (a - 1) * lw.k_a)
    if l == 0:
        v_first = v
    else:
        v = v + (v_first - v) * sigmoid(lw.v0 + _lora(lw.v_lora, xv))
    w = np.exp(-DECAY_SCALE * sigmoid(lw.w0 + w))
    y = np.empty((T, D), np.float32)
    f32 = lambda z: np.ascontiguousarray(z, dtype=np.float32)  # noqa: E731
    K.rwkv7_wkv(y, S, f32(r), f32(w), f32(k), f32(v), f32(-kk), f32(kk * a))
    with PROFILER.phase("norm"):
        yh = y.reshape(T, H, N)
        mu = yh.mean(-1, keepdims=True, dtype=np.float32)
        dv = yh - mu
        var = (dv * dv).mean(-1, keepdims=True, dtype=np.float32)
        y = (dv / np.sqrt(var + np.float32(c.gn_eps))).reshape(T, D) * lw.ln_x[0] + lw.ln_x[1]
        bonus = (r * k * lw.r_k).reshape(T, H, N).sum(-1, keepdims=True)
        y = y + (bonus * v.reshape(T, H, N)).reshape(T, D)
    return lw.output(np.empty((T, D), np.float32), f32(y * g)), v_first


def channel_mixing(lw: LayerWeights, x, shift):
    """W_v relu(W_k (x + (x_prev - x) x_k))^2 over the chunk x [T, D]."""
    with PROFILER.phase("conv"):
        xk = np.ascontiguousarray(x + (shifted(x, shift) - x) * lw.ffn_mix)
    k = lw.ffn_key(np.empty((x.shape[0], lw.ffn_key.n), np.float32), xk)
    K.relu2(k, k)
    return lw.ffn_value(np.empty_like(x), k)


class Rwkv7Model(RecurrentModel):
    """A loaded RWKV-7 model (RWKV-LM tensor naming in safetensors, config model_type "rwkv7").
    Made by ``ryzjupyter.load``; options as ``RwkvModel``."""

    family = "rwkv7"

    def _load(self, ck, fmt, progress):
        kind = detect_kind(ck.config, ck)
        if kind.family != "rwkv7":
            raise CheckpointError(f"{self.path.name} is a {kind.family} model, not RWKV-7")
        if any(n.startswith("model.layers.") for n in ck.names()):
            raise CheckpointError("this RWKV-7 checkpoint uses the flash-linear-attention tensor naming "
                                  "(model.layers.*); ryzjupyter reads the RWKV-LM naming (blocks.<l>.att.*): "
                                  "convert it with RWKV-LM's tools")
        c = self.config = Config.from_dict(ck.config)
        self.embed = check_float(ck, "emb.weight", (c.vocab_size, c.dim))
        self.layers = []
        for l in range(c.n_layers):
            self.layers.append(LayerWeights(ck, l, c, fmt))
            if progress is not None:
                progress(l + 1, c.n_layers)
        self.ln_out = (check_float(ck, "ln_out.weight", (c.dim,)), check_float(ck, "ln_out.bias", (c.dim,)))
        self.lm_head = lm_head(ck, "head.weight", self.embed, c.tied)
        self.vocab_size = c.vocab_size

    def fresh_state(self):
        c = self.config
        return layer_state(c.n_layers, (c.dim, 0.0), ((c.n_heads, c.head_size, c.head_size), 0.0), (c.dim, 0.0))

    def _final_norm(self, rows):
        return np.ascontiguousarray(layernorm(rows, *self.ln_out, 1e-5), dtype=np.float32)

    def _run_chunk(self, tokens, state, want):
        c = self.config
        h = self.embed[tokens]
        v_first = None
        for l, lw in enumerate(self.layers):
            st = state[3 * l:3 * l + 3]
            if l == 0:
                h = layernorm(h, *lw.ln0, c.norm_eps)
            x = np.ascontiguousarray(layernorm(h, *lw.ln1, c.norm_eps), dtype=np.float32)
            att, v_first = time_mixing(c, lw, x, st[:2], v_first, l)
            h = h + att
            x = np.ascontiguousarray(layernorm(h, *lw.ln2, c.norm_eps), dtype=np.float32)
            h = h + channel_mixing(lw, x, st[2])
        return self._final(np.ascontiguousarray(h, dtype=np.float32), want)

    def _program(self, p):
        """The decode step as a program: time_mixing and channel_mixing with one token."""
        c = self.config
        D, F, H, N = c.dim, c.d_ffn, c.n_heads, c.head_size
        ones = np.ones(D, np.float32)
        h, x, d, o, y = p.scratch(D), p.scratch(D), p.scratch(D), p.scratch(D), p.scratch(D)
        xs = [p.scratch(D) for _ in range(6)]
        r, k, v, w, a, g, kk, na, bv, t2, vf = (p.scratch(D) for _ in range(11))
        rmax = max(max(pair[0].n for pair in (lw.w_lora, lw.a_lora, lw.g_lora, lw.v_lora or lw.w_lora))
                   for lw in self.layers)
        t1, kf = p.scratch(rmax), p.scratch(F)

        def lora(out, x_in, pair, act=None):
            p.linear(t1, x_in, pair[0])
            if act:
                p.op(act, [t1, t1], [pair[0].n])
            p.linear(out, t1, pair[1])

        p.op("embed", [h, p.w(self.embed)], [D, c.vocab_size])
        for l, lw in enumerate(self.layers):
            s = 3 * l
            if l == 0:
                p.op("layernorm", [h, h, p.w(lw.ln0[0]), p.w(lw.ln0[1])], [D], c.norm_eps)
            p.op("layernorm", [x, h, p.w(lw.ln1[0]), p.w(lw.ln1[1])], [D], c.norm_eps)
            p.op("sub", [d, p.state(s), x], [D])                      # d = x_prev - x
            for dst, m in zip(xs, lw.mix):
                p.op("mix", [dst, x, d, p.w(m)], [D])
            p.op("copy", [p.state(s), x], [D])
            xr, xw, xk, xv, xa, xg = xs
            p.linear(r, xr, lw.receptance)
            p.linear(k, xk, lw.key)
            p.linear(v, xv, lw.value)
            lora(w, xw, lw.w_lora, "tanh")
            lora(a, xa, lw.a_lora)
            p.op("add", [a, a, p.w(lw.a0)], [D])
            p.op("sigmoid", [a, a], [D])
            lora(g, xg, lw.g_lora, "sigmoid")
            p.op("mul", [kk, k, p.w(lw.k_k)], [D])
            p.op("l2norm", [kk, kk], [N, H])
            p.op("sub", [t2, a, p.w(ones)], [D])                      # k = k * (1 + (a - 1) k_a)
            p.op("mul", [t2, t2, p.w(lw.k_a)], [D])
            p.op("add", [t2, t2, p.w(ones)], [D])
            p.op("mul", [k, k, t2], [D])
            if l == 0:
                p.op("copy", [vf, v], [D])
            else:
                lora(t2, xv, lw.v_lora)
                p.op("add", [t2, t2, p.w(lw.v0)], [D])
                p.op("sigmoid", [t2, t2], [D])
                p.op("fma", [v, v, vf, t2], [D])                       # v + (v_first - v) sig
            p.op("decay7", [w, w, p.w(lw.w0)], [D])
            p.op("scale", [na, kk], [D], -1.0)
            p.op("mul", [bv, kk, a], [D])
            p.op("wkv7_step", [y, p.state(s + 1), r, w, k, v, na, bv], [H, N])
            p.op("groupnorm", [y, y, p.w(lw.ln_x[0]), p.w(lw.ln_x[1])], [N, H], c.gn_eps)
            p.op("bonus7", [y, r, k, p.w(lw.r_k), v], [H, N])
            p.op("mul", [y, y, g], [D])
            p.linear(o, y, lw.output)
            p.op("add", [h, h, o], [D])
            p.op("layernorm", [x, h, p.w(lw.ln2[0]), p.w(lw.ln2[1])], [D], c.norm_eps)
            p.op("sub", [d, p.state(s + 2), x], [D])
            p.op("mix", [xs[0], x, d, p.w(lw.ffn_mix)], [D])
            p.op("copy", [p.state(s + 2), x], [D])
            p.linear(kf, xs[0], lw.ffn_key)
            p.op("relu2", [kf, kf], [F])
            p.linear(o, kf, lw.ffn_value)
            p.op("add", [h, h, o], [D])
        p.op("layernorm", [x, h, p.w(self.ln_out[0]), p.w(self.ln_out[1])], [D], 1e-5)
        p.linear(p.LOGITS, x, self.lm_head)

    def _nbytes(self):
        return self.embed.nbytes + sum(lw.nbytes for lw in self.layers) + head_nbytes(self.lm_head, self.embed)

    def __repr__(self):
        c = self.config
        return (f"Rwkv7Model({self.name!r}, RWKV-7, layers={c.n_layers}, dim={c.dim}, heads={c.n_heads}x"
                f"{c.head_size}, vocab={c.vocab_size}, {self.weight_format}, {self.nbytes / 2**20:.0f} MiB)")


def from_pretrained(folder, **options):
    """The RWKV-7 model in `folder` (ryzjupyter.load calls this)."""
    return Rwkv7Model(folder, **options)
