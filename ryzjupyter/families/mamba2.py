"""Mamba-2 (Mamba2ForCausalLM) engine: config, weights, state, forward.

The block (transformers modeling_mamba2.py, float32; its chunked SSD and the recurrence below
are the same sums in another order):

    per layer:  x = rmsnorm(h)
                g, xBC, dt = W_in x                 ([I], [I + 2 G N], [H]; + bias if use_bias)
                xBC = silu(conv1d(xBC)) ; u, B, C = xBC   (u [I] = H heads of P; B, C [G, N])
                per head k, channel c = k P + p, group q = k / (H / G):
                  d = softplus(dt[k] + dt_bias[k])
                  h[c, n] = exp(A[k] d) h[c, n] + d B[q, n] u[c]          (A = -exp(A_log))
                  y[c] = sum_n h[c, n] C[q, n] + D[k] u[c]
                y = groupwise_rmsnorm(y * silu(g)) * w_norm                 (G groups of I / G)
                h = h + W_out y
    logits = rmsnorm(h, norm_f) @ lm_head^T

The per-channel recurrence is Mamba-1's selective scan with A, dt and D broadcast over each head's
channels, so it runs in the same native kernel (recurrent.h), once per group of heads.
State per layer: conv [I + 2 G N, K] and ssm [G, I / G, N].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ryzjupyter.engine.checkpoint import CheckpointError
from ryzjupyter.families.head_and_state import (final_rmsnorm, head_nbytes, layer_state, load_backbone,
                                                run_backbone)
from ryzjupyter.families.recurrent import K, Linear, RecurrentModel, check_float, config_int


@dataclass
class Config:
    dim: int
    n_layers: int
    vocab_size: int
    d_inner: int
    d_state: int
    d_conv: int
    n_heads: int
    head_dim: int
    n_groups: int
    use_bias: bool
    conv_bias: bool
    norm_eps: float
    tied: bool
    max_context: int

    @property
    def conv_dim(self):
        return self.d_inner + 2 * self.n_groups * self.d_state

    @classmethod
    def from_dict(cls, cfg: dict) -> "Config":
        fam = "Mamba-2"
        D = config_int(cfg, "hidden_size", family=fam)
        H = config_int(cfg, "num_heads", family=fam)
        P = config_int(cfg, "head_dim", family=fam)
        G = config_int(cfg, "n_groups", 1, family=fam)
        I = int(cfg.get("expand", 2) * D)
        if H * P != I:
            raise CheckpointError(f"config.json: num_heads * head_dim = {H * P} must equal expand * hidden_size "
                                  f"= {I}; the config is not a valid Mamba-2 config")
        if H % G:
            raise CheckpointError(f"config.json: num_heads {H} is not a multiple of n_groups {G}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"hidden_act={act!r} is not supported: Mamba-2 checkpoints use 'silu'")
        lim = cfg.get("time_step_limit", [0.0, math.inf])

        def num(v):
            if isinstance(v, dict) and "__float__" in v:
                return float(v["__float__"])
            return math.inf if v is None else float(v)
        if lim is not None and (num(lim[0]) > 0 or num(lim[1]) != math.inf):
            raise CheckpointError(f"time_step_limit={lim!r} (a clamped dt) is not supported; only the default "
                                  "(0, inf) is implemented")
        k = config_int(cfg, "conv_kernel", 4, family=fam)
        if k > 16:
            raise CheckpointError(f"conv_kernel={k} is larger than the 16 the conv kernel supports")
        return cls(dim=D, n_layers=config_int(cfg, "num_hidden_layers", family=fam),
                   vocab_size=config_int(cfg, "vocab_size", family=fam), d_inner=I,
                   d_state=config_int(cfg, "state_size", 128, family=fam), d_conv=k, n_heads=H, head_dim=P,
                   n_groups=G, use_bias=bool(cfg.get("use_bias", False)),
                   conv_bias=bool(cfg.get("use_conv_bias", True)),
                   norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   max_context=int(cfg.get("max_position_embeddings") or 1 << 20))


class LayerWeights:
    def __init__(self, ck, p, c: Config, fmt):
        D, I, N, H, G, Kc, CD = c.dim, c.d_inner, c.d_state, c.n_heads, c.n_groups, c.d_conv, c.conv_dim
        m = p + "mixer."
        self.norm = check_float(ck, p + "norm.weight", (D,))
        w_in = check_float(ck, m + "in_proj.weight", (I + CD + H, D))
        b_in = check_float(ck, m + "in_proj.bias", (I + CD + H,)) if c.use_bias else None
        part = lambda a, b: Linear(w_in[a:b], None if b_in is None else b_in[a:b], fmt)  # noqa: E731
        self.in_g, self.in_xbc, self.in_dt = part(0, I), part(I, I + CD), part(I + CD, I + CD + H)
        self.conv_w = check_float(ck, m + "conv1d.weight", (CD, 1, Kc)).reshape(CD, Kc).copy()
        self.conv_b = check_float(ck, m + "conv1d.bias", (CD,)) if c.conv_bias else None
        P = c.head_dim
        self.dt_bias = check_float(ck, m + "dt_bias", (H,))
        A = -np.exp(check_float(ck, m + "A_log", (H,)))
        self.A = np.ascontiguousarray(np.repeat(A, P)[:, None] * np.ones((1, N), np.float32))   # [I, N]
        self.D = np.repeat(check_float(ck, m + "D", (H,)), P)                                     # [I]
        self.gnorm = check_float(ck, m + "norm.weight", (I,))
        self.out = Linear(check_float(ck, m + "out_proj.weight", (D, I)),
                          check_float(ck, m + "out_proj.bias", (D,)) if c.use_bias else None, fmt)

    @property
    def nbytes(self):
        return sum(getattr(self, a).nbytes for a in ("in_g", "in_xbc", "in_dt", "out", "conv_w", "A", "D",
                                                     "gnorm", "norm"))


def mixer_block(c: Config, lw: LayerWeights, conv_state, ssm_state, x, out):
    """out [T, D] = the Mamba-2 mixer of one layer on x = rmsnorm(h) [T, D]; updates the state."""
    T = x.shape[0]
    I, N, G, P = c.d_inner, c.d_state, c.n_groups, c.head_dim
    g = lw.in_g(np.empty((T, I), np.float32), x)                   # g, xBC, dt = W_in x
    xbc = lw.in_xbc(np.empty((T, c.conv_dim), np.float32), x)
    dt = lw.in_dt(np.empty((T, c.n_heads), np.float32), x)
    conv = np.empty_like(xbc)
    K.mamba_conv1d(conv, conv_state, xbc, lw.conv_w, lw.conv_b)    # silu(conv1d(xBC))
    dtc = np.repeat(dt + lw.dt_bias, P, axis=1)                     # per channel (softplus in the scan)
    y = np.empty((T, I), np.float32)
    Ig = I // G
    for q in range(G):                                              # one scan per group of heads
        cs = slice(q * Ig, (q + 1) * Ig)
        u = np.ascontiguousarray(conv[:, cs])
        B = np.ascontiguousarray(conv[:, I + q * N:I + (q + 1) * N])
        C = np.ascontiguousarray(conv[:, I + G * N + q * N:I + G * N + (q + 1) * N])
        yq = np.empty_like(u)
        K.mamba_scan(yq, ssm_state[q], u, np.ascontiguousarray(dtc[:, cs]), lw.A[cs], B, C, lw.D[cs], None)
        y[:, cs] = yq
    gs = np.empty_like(g)
    K.silu(gs, g)
    K.mul(y, y, gs)                                                 # y * silu(g)
    yn = np.empty_like(y)
    K.rmsnorm(yn.reshape(T * G, Ig), y.reshape(T * G, Ig), np.ones(Ig, np.float32), c.norm_eps)
    yn *= lw.gnorm                                                  # groupwise rmsnorm, then the weight
    lw.out(out, yn)


class Mamba2Model(RecurrentModel):
    """A loaded Mamba-2 model (``Mamba2ForCausalLM``); options as ``MambaModel``."""

    family = "mamba2"

    def _load(self, ck, fmt, progress):
        load_backbone(self, ck, fmt, progress, Config, LayerWeights, "Mamba-2")

    def fresh_state(self):
        c = self.config
        return layer_state(c.n_layers, ((c.conv_dim, c.d_conv), 0.0),
                           ((c.n_groups, c.d_inner // c.n_groups, c.d_state), 0.0))

    def _final_norm(self, rows):
        return final_rmsnorm(self, rows)

    def _run_chunk(self, tokens, state, want):
        return run_backbone(self, mixer_block, tokens, state, want)

    def _program(self, p):
        """The decode step as a program: the same math as mixer_block with one token."""
        c = self.config
        D, I, N, H, P, G, CD = c.dim, c.d_inner, c.d_state, c.n_heads, c.head_dim, c.n_groups, c.conv_dim
        Ig = I // G
        h, x, g, xbc, dt = p.scratch(D), p.scratch(D), p.scratch(I), p.scratch(CD), p.scratch(H)
        conv, dtc, y, gs, yn, out = p.scratch(CD), p.scratch(I), p.scratch(I), p.scratch(I), p.scratch(I), p.scratch(D)
        ones = np.ones(Ig, np.float32)
        p.op("embed", [h, p.w(self.embed)], [D, c.vocab_size])
        for l, lw in enumerate(self.layers):
            p.op("rmsnorm", [x, h, p.w(lw.norm)], [D, 1], c.norm_eps)
            p.linear(g, x, lw.in_g)
            p.linear(xbc, x, lw.in_xbc)
            p.linear(dt, x, lw.in_dt)
            conv_b = p.w(lw.conv_b) if lw.conv_b is not None else (0, 0)
            p.op("conv_step", [conv, p.state(2 * l), xbc, p.w(lw.conv_w), conv_b], [CD, c.d_conv])
            p.op("head_bcast", [dtc, dt, p.w(lw.dt_bias)], [H, P])
            for q in range(G):
                cs = slice(q * Ig, (q + 1) * Ig)
                p.op("scan_step", [p.at(y, q * Ig), p.state(2 * l + 1, q * Ig * N), p.at(conv, q * Ig),
                                   p.at(dtc, q * Ig), p.w(np.ascontiguousarray(lw.A[cs])),
                                   p.at(conv, I + q * N), p.at(conv, I + G * N + q * N),
                                   p.w(np.ascontiguousarray(lw.D[cs])), (0, 0)], [Ig, N])
            p.op("silu", [gs, g], [I])
            p.op("mul", [y, y, gs], [I])
            p.op("rmsnorm", [yn, y, p.w(ones)], [Ig, G], c.norm_eps)
            p.op("mul", [yn, yn, p.w(lw.gnorm)], [I])
            p.linear(out, yn, lw.out)
            p.op("add", [h, h, out], [D])
        p.op("rmsnorm", [x, h, p.w(self.norm_f)], [D, 1], c.norm_eps)
        p.linear(p.LOGITS, x, self.lm_head)

    def _nbytes(self):
        return (self.embed.nbytes + self.norm_f.nbytes + sum(lw.nbytes for lw in self.layers)
                + head_nbytes(self.lm_head, self.embed))

    def __repr__(self):
        c = self.config
        return (f"Mamba2Model({self.name!r}, layers={c.n_layers}, dim={c.dim}, heads={c.n_heads}x{c.head_dim}, "
                f"groups={c.n_groups}, d_state={c.d_state}, vocab={c.vocab_size}, {self.weight_format}, "
                f"{self.nbytes / 2**20:.0f} MiB)")


def from_pretrained(folder, **options):
    """The Mamba-2 model in `folder` (ryzjupyter.load calls this)."""
    return Mamba2Model(folder, **options)
