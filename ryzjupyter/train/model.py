"""BitNet b1.58 in plain torch, computing exactly what transformers' BitNetForCausalLM (5.23) computes for a
packed ``bitlinear``/``offline`` checkpoint, with straight-through estimators so it can be trained (QAT).

Per BitLinear (every q/k/v/o/gate/up/down projection):
  activations: per token absmax int8   s_x = 127 / max(|x|).clamp(1e-5);  x_q = clamp(round(x*s_x), -128, 127)
               (torch.round = half to even), used as x_q / s_x
  weights:     per tensor absmean ternary  s_w = 1 / mean(|W|).clamp(1e-5);  t = clamp(round(W*s_w), -1, 1)
               used as t / s_w  (the exported ``weight_scale`` is s_w: effective weight = ternary / weight_scale)
  gradients pass straight through both roundings (x + (q(x) - x).detach()).
Block: RMSNorm -> q,k,v -> RoPE (rotate_half) -> causal GQA softmax attention -> attn_sub_norm -> o_proj -> residual;
RMSNorm -> relu(gate)^2 * up -> ffn_sub_norm -> down_proj -> residual.  Final RMSNorm, tied float lm_head.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class BitNetConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 640
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 0
    eos_token_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def act_quant_int(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: returns (integer-valued float tensor, scale s_x = 127/absmax)."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * s).round().clamp(-128, 127), s


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """s_w = 1 / mean|W| (per tensor, float32): the value exported as ``weight_scale``."""
    return 1.0 / w.float().abs().mean().clamp(min=1e-5)


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = weight_scale(w)
    return (w.float() * s).round().clamp(-1, 1), s


class _BitLinearFn(torch.autograd.Function):
    """Forward exactly as transformers' packed BitLinear: y = (x_q @ t^T) / (s_w * s_x), where x_q @ t^T is a sum of
    small integers (exact in float32). Backward: straight-through estimator for both roundings, i.e. the gradients
    of y = (x_q/s_x) @ (t/s_w)^T with respect to x and W as if the quantizers were the identity."""

    @staticmethod
    def forward(ctx, x, w):
        xq, sx = act_quant_int(x)
        t, sw = ternarize(w)
        y = F.linear(xq, t) / (sw * sx)
        ctx.save_for_backward(xq, sx, t, sw)
        return y

    @staticmethod
    def backward(ctx, gy):
        xq, sx, t, sw = ctx.saved_tensors
        gx = gy.matmul(t / sw)
        gw = gy.reshape(-1, gy.shape[-1]).t().matmul((xq / sx).reshape(-1, xq.shape[-1]))
        return gx, gw


class BitLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.fixed = None  # (ternary float tensor [out, in], s_w) when loaded from a packed checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            t, sw = self.fixed
            xq, sx = act_quant_int(x)
            return F.linear(xq, t) / (sw * sx)
        return _BitLinearFn.apply(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(head_dim: int, n: int, theta: float, offset: int = 0):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    pos = torch.arange(offset, offset + n, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def causal_mask(T: int, dtype) -> torch.Tensor:
    return torch.full((T, T), torch.finfo(dtype).min, dtype=dtype).triu(1)


class Attention(nn.Module):
    def __init__(self, c: BitNetConfig):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.q_proj = BitLinear(c.hidden_size, c.num_attention_heads * hd)
        self.k_proj = BitLinear(c.hidden_size, c.num_key_value_heads * hd)
        self.v_proj = BitLinear(c.hidden_size, c.num_key_value_heads * hd)
        self.o_proj = BitLinear(c.num_attention_heads * hd, c.hidden_size)
        self.attn_sub_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c, hd = self.c, self.c.head_dim
        q = self.q_proj(x).view(B, T, c.num_attention_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.num_key_value_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.num_key_value_heads, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = c.num_attention_heads // c.num_key_value_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        # written like transformers' eager_attention_forward so that the float32 results are bit-identical
        att = torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5
        att = att + causal_mask(T, att.dtype)
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        a = torch.matmul(att, v).transpose(1, 2).reshape(B, T, c.num_attention_heads * hd)
        return self.o_proj(self.attn_sub_norm(a))


class MLP(nn.Module):
    def __init__(self, c: BitNetConfig):
        super().__init__()
        self.gate_proj = BitLinear(c.hidden_size, c.intermediate_size)
        self.up_proj = BitLinear(c.hidden_size, c.intermediate_size)
        self.down_proj = BitLinear(c.intermediate_size, c.hidden_size)
        self.ffn_sub_norm = RMSNorm(c.intermediate_size, c.rms_norm_eps)

    def forward(self, x):
        return self.down_proj(self.ffn_sub_norm(F.relu(self.gate_proj(x)).square() * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, c: BitNetConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, h, cos, sin):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class BitNetLM(nn.Module):
    """Parameter names follow transformers (``model.`` prefix dropped: embed_tokens, layers.N...., norm)."""

    def __init__(self, c: BitNetConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        cos, sin = rope_cos_sin(self.config.head_dim, T, self.config.rope_theta)
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return F.linear(self.norm(h), self.embed_tokens.weight)  # tied lm_head, float, never quantized

    def num_params(self) -> dict:
        emb = self.embed_tokens.weight.numel()
        lin = sum(m.weight.numel() for m in self.modules() if isinstance(m, BitLinear))
        tot = sum(p.numel() for p in self.parameters())
        return {"total": tot, "embedding": emb, "ternary": lin, "norms": tot - emb - lin}


def trainable_from_packed(folder: str, max_position_embeddings: int | None = None) -> BitNetLM:
    """load_packed's model made trainable again (train.py --init): each BitLinear's latent weight is
    w = t / (s_w mean|t|), whose ternarize() is the stored (t, s_w) again (mean|w| = 1 / s_w, and w s_w =
    t / mean|t| rounds to t), so training starts from the exported model's exact function.
    `max_position_embeddings` replaces the context (RoPE has no table)."""
    m = load_packed(folder).train()
    if max_position_embeddings:
        m.config.max_position_embeddings = int(max_position_embeddings)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, BitLinear) and mod.fixed is not None:
                t, sw = mod.fixed
                mod.weight.copy_(t / (sw * t.abs().mean().clamp(min=1e-8)))
                mod.fixed = None
    return m


def load_packed(folder: str) -> BitNetLM:
    """Build a BitNetLM (inference only, float32) from a packed ``bitlinear`` checkpoint folder written by
    ryzjupyter.train.export: ternary weights and weight_scale are used as stored."""
    import json
    import os

    from safetensors.torch import load_file

    cfg = json.load(open(os.path.join(folder, "config.json")))
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 500000.0)
    c = BitNetConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                     intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                     num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_key_value_heads"],
                     max_position_embeddings=cfg["max_position_embeddings"], rope_theta=theta,
                     rms_norm_eps=cfg["rms_norm_eps"], bos_token_id=cfg["bos_token_id"],
                     eos_token_id=cfg["eos_token_id"])
    sd = load_file(os.path.join(folder, "model.safetensors"))
    m = BitNetLM(c)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, BitLinear):
                p = sd["model." + name + ".weight"].to(torch.int32)
                t = torch.cat([((p >> (2 * i)) & 3) - 1 for i in range(4)], dim=0).float()
                mod.fixed = (t, sd["model." + name + ".weight_scale"].float().reshape(()))
                mod.weight.copy_(t)
        for name, p in m.named_parameters():
            if not name.endswith("proj.weight"):
                p.copy_(sd["model." + name].float())
    return m.eval()
