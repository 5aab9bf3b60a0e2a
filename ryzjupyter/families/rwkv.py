"""RWKV-4 (RwkvForCausalLM, RWKV/rwkv-4-*-pile) engine: config, weights, state, forward.

The block (transformers modeling_rwkv.py, float32, eval mode):

    h = embed[ids] ; h = layernorm(h, pre_ln)                     (layer 0 only)
    per layer l:
      x = layernorm(h, ln1) ; s = x shifted one token back (the previous chunk's last x first)
      k = W_k (x mk + s (1 - mk)) ; v = W_v (x mv + s (1 - mv)) ; r = sigmoid(W_r (x mr + s (1 - mr)))
      h = h + W_o (r * wkv(k, v; time_decay, time_first))
      x = layernorm(h, ln2) ; s = shifted x
      h = h + sigmoid(W_r' (x mr' + s (1 - mr'))) * W_v' relu(W_k' (x mk' + s (1 - mk')))^2
      every rescale_every layers: h = h / 2  (and W_o, W_v' of layer l divided by 2^(l // rescale_every))
    logits = layernorm(h, ln_out) @ head^T

State per layer: the last x of the attention and of the feed-forward (token shift, [D] each) and
the WKV numerator, denominator and running max (aa, bb, pp, [D] each): five vectors a layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ryzjupyter.engine.checkpoint import CheckpointError, detect_kind
from ryzjupyter.engine.profiling import PROFILER
from ryzjupyter.families.head_and_state import head_nbytes, layer_state, lm_head
from ryzjupyter.families.recurrent import K, Linear, RecurrentModel, check_float, config_int


@dataclass
class Config:
    dim: int
    n_layers: int
    vocab_size: int
    d_att: int
    d_ffn: int
    norm_eps: float
    rescale_every: int
    tied: bool
    max_context: int

    @classmethod
    def from_dict(cls, cfg: dict) -> "Config":
        fam = "RWKV"
        D = config_int(cfg, "hidden_size", family=fam)
        A = cfg.get("attention_hidden_size") or D
        if A != D:
            raise CheckpointError(f"attention_hidden_size={A} differs from hidden_size={D}: that RWKV-4 variant is "
                                  "not supported (transformers cannot run it either)")
        return cls(dim=D, n_layers=config_int(cfg, "num_hidden_layers", family=fam),
                   vocab_size=config_int(cfg, "vocab_size", family=fam), d_att=int(A),
                   d_ffn=int(cfg.get("intermediate_size") or 4 * D),
                   norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                   rescale_every=config_int(cfg, "rescale_every", 6, family=fam, low=0),
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   max_context=int(cfg.get("context_length") or 1 << 20))


def layernorm(x, w, b, eps):
    """torch.nn.LayerNorm over the last axis in float32 (biased variance)."""
    with PROFILER.phase("norm"):
        mu = x.mean(-1, keepdims=True, dtype=np.float32)
        d = x - mu
        var = (d * d).mean(-1, keepdims=True, dtype=np.float32)
        return (d / np.sqrt(var + np.float32(eps))) * w + b


def sigmoid(x):
    return np.float32(1) / (np.float32(1) + np.exp(-x))


class LayerWeights:
    def __init__(self, ck, p, c: Config, l, fmt):
        D, A, F = c.dim, c.d_att, c.d_ffn
        ln = lambda n: (check_float(ck, p + n + ".weight", (D,)), check_float(ck, p + n + ".bias", (D,)))  # noqa: E731
        mix = lambda n: check_float(ck, p + n, (1, 1, D)).reshape(D)  # noqa: E731
        self.pre_ln = ln("pre_ln") if l == 0 else None
        self.ln1, self.ln2 = ln("ln1"), ln("ln2")
        scale = np.float32(2.0 ** (l // c.rescale_every)) if c.rescale_every > 0 else np.float32(1)
        a = p + "attention."
        self.att_mix = [mix("attention.time_mix_" + n) for n in ("key", "value", "receptance")]
        self.att_mix1 = [np.float32(1) - m for m in self.att_mix]
        self.decay = check_float(ck, a + "time_decay", (A,))
        self.first = check_float(ck, a + "time_first", (A,))
        self.key = Linear(check_float(ck, a + "key.weight", (A, D)), None, fmt)
        self.value = Linear(check_float(ck, a + "value.weight", (A, D)), None, fmt)
        self.receptance = Linear(check_float(ck, a + "receptance.weight", (A, D)), None, fmt)
        self.output = Linear(check_float(ck, a + "output.weight", (D, A)) / scale, None, fmt)
        f = p + "feed_forward."
        self.ffn_mix = [mix("feed_forward.time_mix_" + n) for n in ("key", "receptance")]
        self.ffn_mix1 = [np.float32(1) - m for m in self.ffn_mix]
        self.ffn_key = Linear(check_float(ck, f + "key.weight", (F, D)), None, fmt)
        self.ffn_receptance = Linear(check_float(ck, f + "receptance.weight", (D, D)), None, fmt)
        self.ffn_value = Linear(check_float(ck, f + "value.weight", (D, F)) / scale, None, fmt)

    @property
    def nbytes(self):
        lin = ("key", "value", "receptance", "output", "ffn_key", "ffn_receptance", "ffn_value")
        return sum(getattr(self, n).nbytes for n in lin) + 16 * self.decay.nbytes


def shifted(x, last):
    """x moved one token back, `last` (the previous token's x) in front; `last` becomes x[-1]."""
    s = np.empty_like(x)
    s[0] = last
    s[1:] = x[:-1]
    last[...] = x[-1]
    return s


def time_mixing(lw: LayerWeights, x, st):
    """W_o (r * wkv): the attention of RWKV-4 over the chunk x [T, D]; st = (shift, aa, bb, pp)."""
    T = x.shape[0]
    shift, aa, bb, pp = st
    with PROFILER.phase("conv"):
        s = shifted(x, shift)
        (mk, mv, mr), (nk, nv, nr) = lw.att_mix, lw.att_mix1
        xk, xv, xr = x * mk + s * nk, x * mv + s * nv, x * mr + s * nr
    A = lw.decay.size
    k = lw.key(np.empty((T, A), np.float32), xk)
    v = lw.value(np.empty((T, A), np.float32), xv)
    r = sigmoid(lw.receptance(np.empty((T, A), np.float32), xr))
    wkv = np.empty((T, A), np.float32)
    K.rwkv4_wkv(wkv, aa, bb, pp, k, v, lw.decay, lw.first)
    return lw.output(np.empty_like(x), np.ascontiguousarray(r * wkv))


def channel_mixing(lw: LayerWeights, x, shift):
    """sigmoid(W_r xr) * W_v relu(W_k xk)^2 over the chunk x [T, D]."""
    T = x.shape[0]
    with PROFILER.phase("conv"):
        s = shifted(x, shift)
        (mk, mr), (nk, nr) = lw.ffn_mix, lw.ffn_mix1
        xk, xr = x * mk + s * nk, x * mr + s * nr
    k = lw.ffn_key(np.empty((T, lw.ffn_key.n), np.float32), xk)
    K.relu2(k, k)
    kv = lw.ffn_value(np.empty_like(x), k)
    r = sigmoid(lw.ffn_receptance(np.empty_like(x), xr))
    return r * kv


class RwkvModel(RecurrentModel):
    """A loaded RWKV-4 model (``RwkvForCausalLM``). Made by ``ryzjupyter.load``; options:
    ``max_context``, ``prefill_chunk``, ``weights`` ("f32" exact, or "int8"), ``name``,
    ``snapshots``."""

    family = "rwkv"

    def _load(self, ck, fmt, progress):
        kind = detect_kind(ck.config, ck)
        if kind.family != "rwkv":
            raise CheckpointError(f"{self.path.name} is a {kind.family} model, not RWKV-4")
        c = self.config = Config.from_dict(ck.config)
        self.embed = check_float(ck, "rwkv.embeddings.weight", (c.vocab_size, c.dim))
        self.layers = []
        for l in range(c.n_layers):
            self.layers.append(LayerWeights(ck, f"rwkv.blocks.{l}.", c, l, fmt))
            if progress is not None:
                progress(l + 1, c.n_layers)
        self.ln_out = (check_float(ck, "rwkv.ln_out.weight", (c.dim,)), check_float(ck, "rwkv.ln_out.bias", (c.dim,)))
        self.lm_head = lm_head(ck, "head.weight", self.embed, c.tied)
        self.vocab_size = c.vocab_size

    def fresh_state(self):
        c = self.config
        return layer_state(c.n_layers,
                           (c.dim, 0.0),                            # attention token shift
                           (c.d_att, 0.0), (c.d_att, 0.0),          # aa, bb
                           (c.d_att, -1e38),                        # pp
                           (c.dim, 0.0))                            # feed-forward token shift

    def _final_norm(self, rows):
        return np.ascontiguousarray(layernorm(rows, *self.ln_out, 1e-5), dtype=np.float32)

    def _run_chunk(self, tokens, state, want):
        c = self.config
        h = self.embed[tokens]
        for l, lw in enumerate(self.layers):
            st = state[5 * l:5 * l + 5]
            if l == 0:
                h = layernorm(h, *lw.pre_ln, c.norm_eps)
            h = h + time_mixing(lw, np.ascontiguousarray(layernorm(h, *lw.ln1, c.norm_eps)), st[:4])
            h = h + channel_mixing(lw, np.ascontiguousarray(layernorm(h, *lw.ln2, c.norm_eps)), st[4])
            if c.rescale_every > 0 and (l + 1) % c.rescale_every == 0:
                h = h / np.float32(2)
        return self._final(np.ascontiguousarray(h, dtype=np.float32), want)

    def _program(self, p):
        """The decode step as a program: time_mixing and channel_mixing with one token."""
        c = self.config
        D, A, F = c.dim, c.d_att, c.d_ffn
        h, x, xk, xv, xr = p.scratch(D), p.scratch(D), p.scratch(D), p.scratch(D), p.scratch(D)
        k, v, r, wkv, out = p.scratch(A), p.scratch(A), p.scratch(A), p.scratch(A), p.scratch(D)
        kf, kv = p.scratch(F), p.scratch(D)
        p.op("embed", [h, p.w(self.embed)], [D, c.vocab_size])
        for l, lw in enumerate(self.layers):
            s = 5 * l
            if l == 0:
                p.op("layernorm", [h, h, p.w(lw.pre_ln[0]), p.w(lw.pre_ln[1])], [D], c.norm_eps)
            p.op("layernorm", [x, h, p.w(lw.ln1[0]), p.w(lw.ln1[1])], [D], c.norm_eps)
            for dst, m, m1 in zip((xk, xv, xr), lw.att_mix, lw.att_mix1):
                p.op("lerp", [dst, x, p.state(s), p.w(m), p.w(m1)], [D])
            p.op("copy", [p.state(s), x], [D])                     # the token shift carries x
            p.linear(k, xk, lw.key)
            p.linear(v, xv, lw.value)
            p.linear(r, xr, lw.receptance)
            p.op("sigmoid", [r, r], [A])
            p.op("wkv_step", [wkv, p.state(s + 1), p.state(s + 2), p.state(s + 3), k, v, p.w(lw.decay),
                              p.w(lw.first)], [A])
            p.op("mul", [wkv, r, wkv], [A])
            p.linear(out, wkv, lw.output)
            p.op("add", [h, h, out], [D])
            p.op("layernorm", [x, h, p.w(lw.ln2[0]), p.w(lw.ln2[1])], [D], c.norm_eps)
            for dst, m, m1 in zip((xk, xr), lw.ffn_mix, lw.ffn_mix1):
                p.op("lerp", [dst, x, p.state(s + 4), p.w(m), p.w(m1)], [D])
            p.op("copy", [p.state(s + 4), x], [D])
            p.linear(kf, xk, lw.ffn_key)
            p.op("relu2", [kf, kf], [F])
            p.linear(kv, kf, lw.ffn_value)
            p.linear(out, xr, lw.ffn_receptance)
            p.op("sigmoid", [out, out], [D])
            p.op("mul", [out, out, kv], [D])
            p.op("add", [h, h, out], [D])
            if c.rescale_every > 0 and (l + 1) % c.rescale_every == 0:
                p.op("scale", [h, h], [D], 0.5)
        p.op("layernorm", [x, h, p.w(self.ln_out[0]), p.w(self.ln_out[1])], [D], 1e-5)
        p.linear(p.LOGITS, x, self.lm_head)

    def _nbytes(self):
        return self.embed.nbytes + sum(lw.nbytes for lw in self.layers) + head_nbytes(self.lm_head, self.embed)

    def __repr__(self):
        c = self.config
        return (f"RwkvModel({self.name!r}, RWKV-4, layers={c.n_layers}, dim={c.dim}, ffn={c.d_ffn}, "
                f"vocab={c.vocab_size}, {self.weight_format}, {self.nbytes / 2**20:.0f} MiB)")


def from_pretrained(folder, **options):
    """The RWKV-4 model in `folder` (ryzjupyter.load calls this)."""
    return RwkvModel(folder, **options)
