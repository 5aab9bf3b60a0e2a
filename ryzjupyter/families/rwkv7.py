"""RWKV-7 "Goose" engine: config, weights, state, forward.

Checkpoints: config.json with ``model_type: "rwkv7"`` (hidden_size, num_hidden_layers,
head_size, vocab_size, intermediate_size) and safetensors in the RWKV-LM tensor naming
(``emb.weight``, ``blocks.<l>.att.*``, ``blocks.<l>.ffn.*``, ``ln_out.*``, ``head.weight``;
random_recurrent.py writes such folders), or in the Hugging Face naming of
flash-linear-attention's ``RWKV7ForCausalLM`` (the fla-hub checkpoints: ``model.embeddings``,
``model.layers.<l>.attn.{r,k,v,o}_proj``, ``attn.{w,a,v,g}_lora.lora.{0,2}``, ``attn.g_norm``,
``model.norm``, ``lm_head``), read through ``FlaNames``: the same tensors under other names, the
LoRA matrices transposed, the LoRA biases being w0 / a0 / v0, the group norm's eps head_dim *
norm_eps. The block, from the RWKV-7 paper / RWKV-LM's
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

import re

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
    fla: bool = False           # the checkpoint uses flash-linear-attention's names (FlaNames)

    @property
    def n_heads(self):
        return self.dim // self.head_size

    @classmethod
    def from_dict(cls, cfg: dict, fla: bool = False) -> "Config":
        """fla: the config of flash-linear-attention's RWKV7ForCausalLM (head_dim or num_heads,
        hidden_ratio, norm_bias, norm_first, value_dim, attn)."""
        fam = "RWKV-7"
        D = config_int(cfg, "hidden_size", family=fam)
        norm_eps = float(cfg.get("norm_eps", 1e-5))
        if fla:
            _check_fla_config(cfg, D)
            if cfg.get("head_dim") is not None:
                N = config_int(cfg, "head_dim", family=fam)
            else:
                N = D // config_int(cfg, "num_heads", family=fam)
            ratio = cfg.get("hidden_ratio") or 4
            d_ffn = int(cfg.get("intermediate_size") or 32 * ((int(D * ratio) + 31) // 32))
            gn_eps = N * norm_eps                      # fla: GroupNorm(eps=head_dim * norm_eps)
        else:
            N = config_int(cfg, "head_size", 64, family=fam)
            d_ffn = int(cfg.get("intermediate_size") or 4 * D)
            gn_eps = float(cfg.get("group_norm_eps", 64e-5))
        if N < 1 or D % N:
            raise CheckpointError(f"config.json: hidden_size {D} is not a multiple of the head size {N}")
        return cls(dim=D, n_layers=config_int(cfg, "num_hidden_layers", family=fam),
                   vocab_size=config_int(cfg, "vocab_size", family=fam), head_size=N, d_ffn=d_ffn,
                   norm_eps=norm_eps, gn_eps=gn_eps, tied=bool(cfg.get("tie_word_embeddings", False)),
                   max_context=int(cfg.get("context_length") or 1 << 20), fla=fla)


def _check_fla_config(cfg, D):
    """The fla RWKV7ForCausalLM options ryzjupyter does not run are clear errors."""
    if cfg.get("attn"):
        raise CheckpointError("this RWKV-7 checkpoint mixes in softmax attention layers (config.json 'attn': "
                              f"{cfg['attn']!r:.80}); ryzjupyter runs RWKV-7 models with RWKV-7 layers only")
    vd = cfg.get("value_dim")
    if vd is not None and any(v not in (None, D) for v in (vd if isinstance(vd, list) else [vd])):
        raise CheckpointError(f"config.json: value_dim {vd!r:.60} differs from hidden_size {D}; ryzjupyter runs "
                              "RWKV-7 models whose value size is the hidden size")
    if cfg.get("norm_bias") is False:
        raise CheckpointError("config.json: norm_bias is false (layer norms without a bias); ryzjupyter runs "
                              "RWKV-7 models whose layer norms have a bias")
    act = cfg.get("hidden_act", "sqrelu")
    if act != "sqrelu":
        raise CheckpointError(f"config.json: hidden_act {act!r} is not 'sqrelu'; ryzjupyter runs the RWKV-7 "
                              "channel mixing with the squared ReLU")


# flash-linear-attention's RWKV7ForCausalLM names -> (RWKV-LM name, how): "T" transposed (fla's
# LoRA matrices are nn.Linear weights [out, in]; RWKV-LM stores x @ w1 as [D, r]), an int: that
# row of the first version's stacked attn.x_x [6, D] (x_r, x_w, x_k, x_v, x_a, x_g)
_FLA_RULES = [
    (r"model\.embeddings\.weight", "emb.weight", None),
    (r"model\.norm\.(weight|bias)", r"ln_out.\1", None),
    (r"lm_head\.weight", "head.weight", None),
    (r"model\.layers\.(\d+)\.pre_norm\.(weight|bias)", r"blocks.\1.ln0.\2", None),
    (r"model\.layers\.(\d+)\.attn_norm\.(weight|bias)", r"blocks.\1.ln1.\2", None),
    (r"model\.layers\.(\d+)\.ffn_norm\.(weight|bias)", r"blocks.\1.ln2.\2", None),
    (r"model\.layers\.(\d+)\.attn\.(x_[rwkvag]|k_k|k_a|r_k)", r"blocks.\1.att.\2", None),
    (r"model\.layers\.(\d+)\.attn\.r_proj\.weight", r"blocks.\1.att.receptance.weight", None),
    (r"model\.layers\.(\d+)\.attn\.k_proj\.weight", r"blocks.\1.att.key.weight", None),
    (r"model\.layers\.(\d+)\.attn\.v_proj\.weight", r"blocks.\1.att.value.weight", None),
    (r"model\.layers\.(\d+)\.attn\.o_proj\.weight", r"blocks.\1.att.output.weight", None),
    (r"model\.layers\.(\d+)\.attn\.([wavg])_lora\.lora\.0\.weight", r"blocks.\1.att.\g<2>1", "T"),
    (r"model\.layers\.(\d+)\.attn\.([wavg])_lora\.lora\.2\.weight", r"blocks.\1.att.\g<2>2", "T"),
    (r"model\.layers\.(\d+)\.attn\.([wav])_lora\.lora\.2\.bias", r"blocks.\1.att.\g<2>0", None),
    (r"model\.layers\.(\d+)\.attn\.g_norm\.(weight|bias)", r"blocks.\1.att.ln_x.\2", None),
    (r"model\.layers\.(\d+)\.ffn\.(x_k|key\.weight|value\.weight)", r"blocks.\1.ffn.\2", None),
]


def is_fla_naming(names) -> bool:
    return any(n.startswith("model.layers.") or n == "model.embeddings.weight" for n in names)


class FlaNames:
    """A Checkpoint in flash-linear-attention's RWKV7ForCausalLM naming seen under the RWKV-LM
    names the loader reads: require / f32 / index / `in` by RWKV-LM name, checked against the fla
    tensor (errors name it); a tensor no rule maps stays unused, so check_all_used names it."""

    def __init__(self, ck):
        self.ck, self.folder, self.config = ck, ck.folder, ck.config
        self.map = {}                                   # RWKV-LM name -> (fla name, how)
        for name in ck.names():
            if re.fullmatch(r"model\.layers\.\d+\.attn\.x_x", name):
                l = name.split(".")[2]
                for i, m in enumerate("rwkvag"):
                    self.map[f"blocks.{l}.att.x_{m}"] = (name, i)
                continue
            for pattern, repl, how in _FLA_RULES:
                if re.fullmatch(pattern, name):
                    self.map[re.sub(pattern, repl, name)] = (name, how)
                    break
        self.index = {}
        for lm, (name, how) in self.map.items():
            info = ck.info(name)
            shape = tuple(info.shape)
            shape = shape[::-1] if how == "T" else shape[1:] if isinstance(how, int) else shape
            self.index[lm] = info.__class__(lm, info.dtype, shape, info.file, info.start, info.nbytes)

    def __contains__(self, name):
        return name in self.map

    def names(self):
        return list(self.map)

    def info(self, name):
        return self.index[name]

    def _fla(self, name):
        if name not in self.map:
            raise CheckpointError(f"the RWKV-7 checkpoint in {str(self.folder)!r} (flash-linear-attention naming) "
                                  f"has no tensor for RWKV-LM's {name!r}; the files are incomplete")
        return self.map[name]

    def require(self, name, shape, dtypes, *, what=""):
        fla, how = self._fla(name)
        shapes = shape if isinstance(shape, list) else [shape]
        if how == "T":
            shapes = [tuple(s)[::-1] for s in shapes]
        elif isinstance(how, int):
            shapes = [(6, *tuple(s)[-1:]) for s in shapes]
        self.ck.require(fla, shapes, dtypes, what=what or f"RWKV-LM {name}")
        return self.index[name]

    def f32(self, name):
        fla, how = self._fla(name)
        a = self.ck.f32(fla)
        if how == "T":
            return np.ascontiguousarray(a.T)
        if isinstance(how, int):
            return a[how]
        return a

    def check_all_used(self, ignorable=()):
        self.ck.check_all_used(ignorable)


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
        # layer 0's extra norm of the embedding (fla: pre_norm, absent when norm_first is false)
        self.ln0 = ln("ln0") if l == 0 and (p + "ln0.weight" in ck or not c.fla) else None
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
        fla = is_fla_naming(ck.names())
        if fla:
            ck = FlaNames(ck)
        c = self.config = Config.from_dict(ck.config, fla=fla)
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
        return np.ascontiguousarray(layernorm(rows, *self.ln_out, self.config.norm_eps), dtype=np.float32)

    def _run_chunk(self, tokens, state, want):
        c = self.config
        h = self.embed[tokens]
        v_first = None
        for l, lw in enumerate(self.layers):
            st = state[3 * l:3 * l + 3]
            if lw.ln0 is not None:
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
            if lw.ln0 is not None:
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
        p.op("layernorm", [x, h, p.w(self.ln_out[0]), p.w(self.ln_out[1])], [D], c.norm_eps)
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
