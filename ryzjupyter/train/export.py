"""Write a trained BitNetLM in the ``microsoft/bitnet-b1.58-2B-4T`` packed layout (transformers BitNet,
``quantization_config {quant_method: bitnet, linear_class: bitlinear, quantization_mode: offline}``):

  model.layers.N.<proj>.weight        U8  [out/4, in]  ternary t+1 in 2-bit fields; bits 2i..2i+1 of packed[r, c]
                                                      hold W[i*(out/4) + r, c]  (blocked along output rows)
  model.layers.N.<proj>.weight_scale  F32 [1]          s_w = 1/mean|W|; effective weight = ternary / weight_scale
  model.embed_tokens.weight           BF16 [V, H]      tied float lm_head (no lm_head.weight stored)
  norms                               F32
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from .model import BitLinear, BitNetLM, ternarize

EMBED_DTYPE = torch.bfloat16


def pack_ternary(t: torch.Tensor) -> torch.Tensor:
    """t: int/float tensor [N, K] with values in {-1,0,1}, N % 4 == 0 -> uint8 [N/4, K]."""
    N, K = t.shape
    if N % 4:
        raise ValueError(f"out_features {N} must be a multiple of 4")
    R = N // 4
    u = (t.to(torch.int32) + 1).view(4, R, K)
    packed = u[0] | (u[1] << 2) | (u[2] << 4) | (u[3] << 6)
    return packed.to(torch.uint8)


def unpack_ternary(p: torch.Tensor) -> torch.Tensor:
    p = p.to(torch.int32)
    return torch.cat([((p >> (2 * i)) & 3) - 1 for i in range(4)], dim=0).to(torch.int8)


def round_embeddings_(model: BitNetLM) -> None:
    """Round the float embedding to the stored dtype in place, so that the trainer evaluates exactly the
    weights that are shipped."""
    with torch.no_grad():
        model.embed_tokens.weight.copy_(model.embed_tokens.weight.to(EMBED_DTYPE).float())


def hf_config(c, torch_dtype="bfloat16") -> dict:
    return {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "relu2",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.eos_token_id,
        "torch_dtype": torch_dtype,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear",
                                "quantization_mode": "offline"},
    }


def state_dict_packed(model: BitNetLM) -> dict:
    sd = {}
    for name, mod in model.named_modules():
        if isinstance(mod, BitLinear):
            t, s = ternarize(mod.weight.detach())
            sd[f"model.{name}.weight"] = pack_ternary(t).contiguous()
            sd[f"model.{name}.weight_scale"] = s.reshape(1).float().contiguous()
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            sd[f"model.{name}"] = p.detach().float().contiguous()
    sd["model.embed_tokens.weight"] = model.embed_tokens.weight.detach().to(EMBED_DTYPE).contiguous()
    return sd


def export(model: BitNetLM, out_dir: str, eot_id: int = 2) -> None:
    os.makedirs(out_dir, exist_ok=True)
    save_file(state_dict_packed(model), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(model.config), f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": model.config.bos_token_id,
                   "eos_token_id": [model.config.eos_token_id, eot_id],
                   "pad_token_id": model.config.eos_token_id}, f, indent=2)
        f.write("\n")


def verify_with_transformers(model: BitNetLM, out_dir: str, ids=None) -> float:
    """Load ``out_dir`` with transformers' BitNetForCausalLM in fp32 and return max|Δlogits| / max|logits|
    against ``model`` (whose embedding must already be rounded with round_embeddings_)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    hf.eval()
    if ids is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, model.config.vocab_size, (2, min(64, model.config.max_position_embeddings)),
                            generator=g)
    with torch.no_grad():
        ref = model.eval()(ids).float()
        got = hf(input_ids=ids).logits.float()
    return float((got - ref).abs().max() / ref.abs().max())


if __name__ == "__main__":
    # self-check of the packing layout against transformers' own pack/unpack
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    t = torch.randint(-1, 2, (16, 8))
    mine = pack_ternary(t)
    theirs = pack_weights(t.float())
    assert torch.equal(mine, theirs), (mine, theirs)
    assert torch.equal(unpack_ternary(mine), t.to(torch.int8))
    assert torch.equal(unpack_weights(mine, dtype=torch.float32).to(torch.int8), t.to(torch.int8))
    print("pack layout matches transformers.integrations.bitnet")
