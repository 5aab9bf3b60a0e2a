"""Mamba (MambaForCausalLM, state-spaces/mamba-*-hf) engine: config, weights, state, forward.

The block (transformers modeling_mamba.py, its torch path, float32):

    h = embed[ids]
    per layer:  x = rmsnorm(h)
                xi, z = W_in x  (the two halves of in_proj, [I] each; + bias if use_bias)
                u = silu(conv1d(xi))            causal depthwise conv over the last K inputs
                dt_r, B, C = W_x u              (time_step_rank, N, N)
                dt = W_dt dt_r + b_dt           (softplus inside the scan)
                y = scan(u, dt, A = -exp(A_log), B, C, D) * silu(z)
                h = h + W_out y                 (+ bias if use_bias)
    logits = rmsnorm(h, norm_f) @ lm_head^T     (tied: lm_head = embed)

State per layer: conv [I, K] (the last K conv inputs) and ssm [I, N]; 2 arrays a layer, the
same size whatever the context length. The conv and scan run in the native kernels
(recurrent.h), the linears as float32 (or int8) GEMMs over a chunk of tokens.
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
    dt_rank: int
    use_bias: bool
    conv_bias: bool
    norm_eps: float
    tied: bool
    max_context: int

    @classmethod
    def from_dict(cls, cfg: dict) -> "Config":
        fam = "Mamba"
        D = config_int(cfg, "hidden_size", family=fam)
        expand = cfg.get("expand", 2)
        I = cfg.get("intermediate_size") or int(expand * D)
        rank = cfg.get("time_step_rank", "auto")
        if rank == "auto":
            rank = math.ceil(D / 16)
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"hidden_act={act!r} is not supported: Mamba checkpoints use 'silu'")
        k = config_int(cfg, "conv_kernel", 4, family=fam)
        if k > 16:
            raise CheckpointError(f"conv_kernel={k} is larger than the 16 the conv kernel supports")
        c = cls(dim=D, n_layers=config_int(cfg, "num_hidden_layers", family=fam),
                vocab_size=config_int(cfg, "vocab_size", family=fam), d_inner=int(I),
                d_state=config_int(cfg, "state_size", 16, family=fam), d_conv=k, dt_rank=int(rank),
                use_bias=bool(cfg.get("use_bias", False)), conv_bias=bool(cfg.get("use_conv_bias", True)),
                norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                tied=bool(cfg.get("tie_word_embeddings", True)),
                max_context=int(cfg.get("max_position_embeddings") or 1 << 20))
        if not isinstance(c.d_inner, int) or c.d_inner < 1 or c.dt_rank < 1:
            raise CheckpointError(f"config.json: intermediate_size {I!r} / time_step_rank {rank!r} are invalid")
        return c


class LayerWeights:
    def __init__(self, ck, p, c: Config, fmt):
        D, I, N, R, Kc = c.dim, c.d_inner, c.d_state, c.dt_rank, c.d_conv
        m = p + "mixer."
        self.norm = check_float(ck, p + "norm.weight", (D,))
        w_in = check_float(ck, m + "in_proj.weight", (2 * I, D))
        b_in = check_float(ck, m + "in_proj.bias", (2 * I,)) if c.use_bias else None
        self.in_x = Linear(w_in[:I], None if b_in is None else b_in[:I], fmt)
        self.in_z = Linear(w_in[I:], None if b_in is None else b_in[I:], fmt)
        self.conv_w = check_float(ck, m + "conv1d.weight", (I, 1, Kc)).reshape(I, Kc).copy()
        self.conv_b = check_float(ck, m + "conv1d.bias", (I,)) if c.conv_bias else None
        w_x = check_float(ck, m + "x_proj.weight", (R + 2 * N, I))
        self.x_dt, self.x_B, self.x_C = (Linear(w_x[:R], None, fmt), Linear(w_x[R:R + N], None, fmt),
                                         Linear(w_x[R + N:], None, fmt))
        self.dt = Linear(check_float(ck, m + "dt_proj.weight", (I, R)), check_float(ck, m + "dt_proj.bias", (I,)),
                         "f32")                      # tiny (I x R): kept exact
        self.A = -np.exp(check_float(ck, m + "A_log", (I, N)))
        self.D = check_float(ck, m + "D", (I,))
        self.out = Linear(check_float(ck, m + "out_proj.weight", (D, I)),
                          check_float(ck, m + "out_proj.bias", (D,)) if c.use_bias else None, fmt)


def mixer_block(c: Config, lw: LayerWeights, conv_state, ssm_state, x, out):
    """out [T, D] = the mixer of one layer on x = rmsnorm(h) [T, D]; updates the layer's state."""
    T = x.shape[0]
    I, N = c.d_inner, c.d_state
    xi = lw.in_x(np.empty((T, I), np.float32), x)            # xi, z = W_in x
    z = lw.in_z(np.empty((T, I), np.float32), x)
    u = np.empty_like(xi)
    K.mamba_conv1d(u, conv_state, xi, lw.conv_w, lw.conv_b)   # u = silu(conv1d(xi))
    dtr = lw.x_dt(np.empty((T, c.dt_rank), np.float32), u)    # dt_r, B, C = W_x u
    B = lw.x_B(np.empty((T, N), np.float32), u)
    C = lw.x_C(np.empty((T, N), np.float32), u)
    dt = lw.dt(np.empty((T, I), np.float32), dtr)             # dt = W_dt dt_r + b (softplus in the scan)
    y = np.empty_like(u)
    K.mamba_scan(y, ssm_state, u, dt, lw.A, B, C, lw.D, z)   # y = (C.h + D u) * silu(z)
    lw.out(out, y)                                            # W_out y


class MambaModel(RecurrentModel):
    """A loaded Mamba model (``MambaForCausalLM``). Made by ``ryzjupyter.load``; options:
    ``max_context``, ``prefill_chunk``, ``weights`` ("f32" exact, or "int8"), ``name``,
    ``snapshots`` (state copies kept for prefix reuse)."""

    family = "mamba"

    def _load(self, ck, fmt, progress):
        load_backbone(self, ck, fmt, progress, Config, LayerWeights, "Mamba")

    def fresh_state(self):
        c = self.config
        return layer_state(c.n_layers, ((c.d_inner, c.d_conv), 0.0), ((c.d_inner, c.d_state), 0.0))

    def _final_norm(self, rows):
        return final_rmsnorm(self, rows)

    def _run_chunk(self, tokens, state, want):
        return run_backbone(self, mixer_block, tokens, state, want)

    def _program(self, p):
        """The decode step as a program: the same math as mixer_block with one token."""
        c = self.config
        D, I, N, R = c.dim, c.d_inner, c.d_state, c.dt_rank
        h, x, xi, z, u = p.scratch(D), p.scratch(D), p.scratch(I), p.scratch(I), p.scratch(I)
        dtr, B, C, dt, y, out = p.scratch(R), p.scratch(N), p.scratch(N), p.scratch(I), p.scratch(I), p.scratch(D)
        p.op("embed", [h, p.w(self.embed)], [D, c.vocab_size])
        for l, lw in enumerate(self.layers):
            p.op("rmsnorm", [x, h, p.w(lw.norm)], [D, 1], c.norm_eps)
            p.linear(xi, x, lw.in_x)
            p.linear(z, x, lw.in_z)
            conv_b = p.w(lw.conv_b) if lw.conv_b is not None else (0, 0)
            p.op("conv_step", [u, p.state(2 * l), xi, p.w(lw.conv_w), conv_b], [I, c.d_conv])
            p.linear(dtr, u, lw.x_dt)
            p.linear(B, u, lw.x_B)
            p.linear(C, u, lw.x_C)
            p.linear(dt, dtr, lw.dt)
            p.op("scan_step", [y, p.state(2 * l + 1), u, dt, p.w(lw.A), B, C, p.w(lw.D), z], [I, N])
            p.linear(out, y, lw.out)
            p.op("add", [h, h, out], [D])
        p.op("rmsnorm", [x, h, p.w(self.norm_f)], [D, 1], c.norm_eps)
        p.linear(p.LOGITS, x, self.lm_head)

    def _nbytes(self):
        n = self.embed.nbytes + self.norm_f.nbytes + head_nbytes(self.lm_head, self.embed)
        for lw in self.layers:
            n += sum(getattr(lw, a).nbytes for a in ("in_x", "in_z", "x_dt", "x_B", "x_C", "dt", "out", "norm",
                                                     "conv_w", "A", "D"))
        return n

    def __repr__(self):
        c = self.config
        return (f"MambaModel({self.name!r}, layers={c.n_layers}, dim={c.dim}, d_inner={c.d_inner}, "
                f"d_state={c.d_state}, vocab={c.vocab_size}, {self.weight_format}, {self.nbytes / 2**20:.0f} MiB)")


def from_pretrained(folder, **options):
    """The Mamba model in `folder` (ryzjupyter.load calls this)."""
    return MambaModel(folder, **options)
