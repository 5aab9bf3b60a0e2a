"""Tiny Mamba, Mamba-2 and RWKV-4 fixtures from transformers (random weights, fixed seeds).

Called by ``python tools/make_fixtures.py --recurrent`` (torch 2.13.0, transformers 5.23.0);
writes tests/fixtures/recurrent/<name>/ with config.json, model.safetensors (in the fixture's
weight format: F32, F16 or BF16), the fixture tokenizer, and reference.safetensors:

    input_ids_<i>       int64 [T_i]            a token sequence
    logits_<i>          float32 [T_i, vocab]   transformers' logits, the model loaded in float32
                                               from the stored weights (bf16/f16 widened exactly)
    greedy_<i>          int64 [16]             generate(do_sample=False, max_new_tokens=16) from
                                               input_ids_<i> (the recurrent cache: prefill, then
                                               one token a step)

plus tests/fixtures/recurrent/manifest.json listing them. Linear weights are drawn larger than
transformers' initialisation so that the logits are far from uniform (greedy decoding has clear
winners); the SSM / WKV parameters keep transformers' initialisation with some noise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

SEQ_LENS = (23, 9, 40)
GREEDY_NEW = 16


def _fixtures():
    from transformers import Mamba2Config, MambaConfig, RwkvConfig
    common = dict(vocab_size=384, bos_token_id=381, eos_token_id=382, pad_token_id=382)
    return {
        "mamba_f32": (MambaConfig(hidden_size=32, state_size=8, num_hidden_layers=2, conv_kernel=4,
                                  expand=2, use_mambapy=False, **common), torch.float32, 11),
        "mamba_bf16": (MambaConfig(hidden_size=48, state_size=16, num_hidden_layers=3, conv_kernel=3,
                                   expand=2, use_bias=True, time_step_rank=5, use_mambapy=False, **common),
                       torch.bfloat16, 12),
        "mamba_f16_untied": (MambaConfig(hidden_size=40, state_size=4, num_hidden_layers=2, conv_kernel=4,
                                         expand=3, use_conv_bias=False, tie_word_embeddings=False,
                                         use_mambapy=False, **common), torch.float16, 13),
        "mamba2_f32": (Mamba2Config(hidden_size=32, state_size=8, num_hidden_layers=2, conv_kernel=4,
                                    expand=2, num_heads=8, head_dim=8, n_groups=1, chunk_size=8,
                                    **common), torch.float32, 21),
        "mamba2_bf16_groups": (Mamba2Config(hidden_size=48, state_size=16, num_hidden_layers=2,
                                            conv_kernel=4, expand=2, num_heads=12, head_dim=8, n_groups=2,
                                            chunk_size=16, use_bias=True, **common), torch.bfloat16, 22),
        "rwkv_f32": (RwkvConfig(hidden_size=32, num_hidden_layers=2, context_length=256, rescale_every=1,
                                **common), torch.float32, 31),
        "rwkv_bf16": (RwkvConfig(hidden_size=48, intermediate_size=96,
                                 num_hidden_layers=4, context_length=256, rescale_every=2, **common),
                      torch.bfloat16, 32),
        "rwkv_f16": (RwkvConfig(hidden_size=40, num_hidden_layers=3, context_length=256, rescale_every=0,
                                tie_word_embeddings=False, **common), torch.float16, 33),
    }


def _randomise(model, seed):
    """Linears and embeddings N(0, s^2) with s ~ 1/sqrt(fan_in) * 1.5; everything else keeps its
    initialisation plus 5 % noise (A_log, D, dt bias, time_decay, time_first, time_mix, norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[1] ** 0.5))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() == 3 and "conv" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * (0.05 * (p.abs().mean() + 0.1)))


def make(fix_dir: Path, tok_dir: Path, write_json, versions, command) -> dict:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    out_root = fix_dir / "recurrent"
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir(parents=True)
    manifest = {}
    for name, (cfg, dtype, seed) in _fixtures().items():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        _randomise(model, seed)
        folder = out_root / name
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tok_dir / f, folder / f)
        # the reference: transformers loads the stored weights in float32 (bf16/f16 widened exactly)
        ref_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        g = torch.Generator().manual_seed(seed + 100)
        tensors, greedy = {}, {}
        with torch.no_grad():
            for i, n in enumerate(SEQ_LENS):
                ids = torch.randint(0, 381, (1, n), generator=g)
                ids[0, 0] = 381
                tensors[f"input_ids_{i}"] = ids[0].clone()
                tensors[f"logits_{i}"] = ref_model(ids).logits[0].float().contiguous()
                gen = ref_model.generate(ids, do_sample=False, max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW,
                                         eos_token_id=None, pad_token_id=382)
                tensors[f"greedy_{i}"] = gen[0, n:].clone()
                greedy[i] = gen[0, n:].tolist()
        save_file(tensors, str(folder / "reference.safetensors"), metadata={"format": "pt"})
        meta = {"fixture": name, "architecture": type(ref_model).__name__, "weights": str(dtype).split(".")[-1],
                "generated_by": "tools/make_fixtures.py --recurrent", "command": command + " --recurrent",
                "versions": versions(), "seed": seed, "sequence_lengths": list(SEQ_LENS), "greedy": greedy,
                "reference_numerics": "transformers' torch path, float32, eval, no_grad, 1 thread"}
        write_json(folder / "reference.json", meta)
        manifest[name] = {"folder": f"tests/fixtures/recurrent/{name}", "architecture": meta["architecture"],
                          "weights": meta["weights"], "files": sorted(p.name for p in folder.iterdir())}
        print(f"  recurrent/{name:22s} {sum(p.stat().st_size for p in folder.iterdir()) / 1024:7.1f} KiB")
    write_json(out_root / "manifest.json", {"generated_by": "tools/make_fixtures.py --recurrent",
                                            "command": command + " --recurrent", "versions": versions(),
                                            "fixtures": manifest})
    return manifest
