"""Random-weight Mamba, Mamba-2, RWKV-4 and RWKV-7 folders of any shape (numpy only), for tests
and benchmarks: config.json + model.safetensors in the checkpoints' own tensor naming, F32 or
BF16. The shapes of the published models are in SHAPES (mamba-130m / 1.4b, RWKV-4 169m / 1.5b).

    write_folder("rwkv7", folder, hidden_size=64, num_hidden_layers=2, head_size=16)
    write_folder("mamba", folder, **SHAPES["mamba-1.4b"], dtype="bf16")
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHAPES = {
    "mamba-130m": dict(hidden_size=768, num_hidden_layers=24, vocab_size=50280, state_size=16),
    "mamba-1.4b": dict(hidden_size=2048, num_hidden_layers=48, vocab_size=50280, state_size=16),
    "rwkv-169m": dict(hidden_size=768, num_hidden_layers=12, vocab_size=50277),
    "rwkv-1.5b": dict(hidden_size=2048, num_hidden_layers=24, vocab_size=50277),
}
FAMILY_OF_SHAPE = {"mamba-130m": "mamba", "mamba-1.4b": "mamba", "rwkv-169m": "rwkv", "rwkv-1.5b": "rwkv"}


def _bf16(a):
    """float32 -> bfloat16 bits (round to nearest even)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _save(tensors: dict, path: Path, dtype: str):
    """A safetensors file written by hand (numpy has no bfloat16)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.asarray(a, np.float32)
        if dtype == "bf16":
            raw, dt = _bf16(a).tobytes(), "BF16"
        else:
            raw, dt = a.tobytes(), "F32"
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def _mamba(cfg, r):
    D, L, V, N = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["state_size"]
    I, Kc, R = 2 * D, cfg.get("conv_kernel", 4), -(-D // 16)
    # the tied head: logits of standard deviation ~3 (a peaked but not degenerate distribution)
    t = {"backbone.embeddings.weight": r((V, D), 3 * D ** -0.5), "backbone.norm_f.weight": 1 + r((D,), 0.1)}
    for l in range(L):
        p = f"backbone.layers.{l}."
        t[p + "norm.weight"] = 1 + r((D,), 0.1)
        t[p + "mixer.in_proj.weight"] = r((2 * I, D), D ** -0.5)
        t[p + "mixer.conv1d.weight"] = r((I, 1, Kc), 0.5)
        t[p + "mixer.conv1d.bias"] = r((I,), 0.1)
        t[p + "mixer.x_proj.weight"] = r((R + 2 * N, I), I ** -0.5)
        t[p + "mixer.dt_proj.weight"] = r((I, R), R ** -0.5)
        t[p + "mixer.dt_proj.bias"] = -4 + r((I,), 0.5)
        t[p + "mixer.A_log"] = np.log(np.tile(np.arange(1, N + 1, dtype=np.float32), (I, 1)))
        t[p + "mixer.D"] = 1 + r((I,), 0.1)
        t[p + "mixer.out_proj.weight"] = r((D, I), I ** -0.5 / L ** 0.5)
    cfg = {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "expand": 2, "conv_kernel": Kc,
           "intermediate_size": I, "time_step_rank": R, "layer_norm_epsilon": 1e-5, "use_bias": False,
           "use_conv_bias": True, "hidden_act": "silu", "tie_word_embeddings": True, **cfg}
    return cfg, t


def _rwkv(cfg, r):
    D, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    F = cfg.get("intermediate_size") or 4 * D
    t = {"rwkv.embeddings.weight": r((V, D), 1.0), "rwkv.ln_out.weight": 1 + r((D,), 0.1),
         "rwkv.ln_out.bias": r((D,), 0.1), "head.weight": r((V, D), 3 * D ** -0.5)}
    for l in range(L):
        p = f"rwkv.blocks.{l}."
        for n in (["pre_ln"] if l == 0 else []) + ["ln1", "ln2"]:
            t[p + n + ".weight"], t[p + n + ".bias"] = 1 + r((D,), 0.1), r((D,), 0.1)
        a, f = p + "attention.", p + "feed_forward."
        t[a + "time_decay"] = r((D,), 1.0)
        t[a + "time_first"] = r((D,), 1.0)
        for n in ("key", "value", "receptance"):
            t[a + "time_mix_" + n] = np.random.default_rng(l).random((1, 1, D)).astype(np.float32)
            t[a + n + ".weight"] = r((D, D), D ** -0.5)
        t[a + "output.weight"] = r((D, D), D ** -0.5)
        for n in ("key", "receptance"):
            t[f + "time_mix_" + n] = np.random.default_rng(l + 99).random((1, 1, D)).astype(np.float32)
        t[f + "key.weight"] = r((F, D), D ** -0.5)
        t[f + "receptance.weight"] = r((D, D), D ** -0.5)
        t[f + "value.weight"] = r((D, F), F ** -0.5)
    cfg = {"architectures": ["RwkvForCausalLM"], "model_type": "rwkv", "intermediate_size": F,
           "attention_hidden_size": D, "layer_norm_epsilon": 1e-5, "rescale_every": 6, "context_length": 4096,
           "tie_word_embeddings": False, **cfg}
    return cfg, t


def _rwkv7(cfg, r):
    D, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    N = cfg.get("head_size", 64)
    H, F = D // N, cfg.get("intermediate_size") or 4 * D
    rank = {"w": max(8, D // 16), "a": max(8, D // 16), "v": max(4, D // 32), "g": max(8, D // 8)}
    t = {"emb.weight": r((V, D), 1.0), "ln_out.weight": 1 + r((D,), 0.1), "ln_out.bias": r((D,), 0.1),
         "head.weight": r((V, D), D ** -0.5)}
    u = np.random.default_rng(7)
    for l in range(L):
        p, a, f = f"blocks.{l}.", f"blocks.{l}.att.", f"blocks.{l}.ffn."
        for n in (["ln0"] if l == 0 else []) + ["ln1", "ln2"]:
            t[p + n + ".weight"], t[p + n + ".bias"] = 1 + r((D,), 0.1), r((D,), 0.1)
        for n in "rwkvag":
            t[a + "x_" + n] = u.random((1, 1, D)).astype(np.float32)
        for n, rk in rank.items():
            if n == "v" and l == 0:
                continue
            t[a + n + "1"] = r((D, rk), D ** -0.5)
            t[a + n + "2"] = r((rk, D), rk ** -0.5)
        t[a + "w0"] = r((1, 1, D), 1.0)
        t[a + "a0"] = r((1, 1, D), 1.0)
        if l > 0:
            t[a + "v0"] = r((1, 1, D), 1.0)
        t[a + "k_k"] = 1 + r((1, 1, D), 0.2)
        t[a + "k_a"] = 1 + r((1, 1, D), 0.2)
        t[a + "r_k"] = r((H, N), 0.5)
        for n in ("receptance", "key", "value", "output"):
            t[a + n + ".weight"] = r((D, D), D ** -0.5)
        t[a + "ln_x.weight"], t[a + "ln_x.bias"] = 1 + r((D,), 0.1), r((D,), 0.1)
        t[f + "x_k"] = u.random((1, 1, D)).astype(np.float32)
        t[f + "key.weight"] = r((F, D), D ** -0.5)
        t[f + "value.weight"] = r((D, F), F ** -0.5)
    cfg = {"architectures": ["Rwkv7ForCausalLM"], "model_type": "rwkv7", "head_size": N, "intermediate_size": F,
           "norm_eps": 1e-5, "group_norm_eps": 64e-5, "context_length": 4096, "tie_word_embeddings": False, **cfg}
    return cfg, t


def write_folder(family, folder, *, seed=0, dtype="f32", tokenizer_from=None, **cfg):
    """Write a random `family` ("mamba", "rwkv", "rwkv7") model into `folder`: config.json and
    model.safetensors (F32 or BF16). cfg: hidden_size, num_hidden_layers, vocab_size and the
    family's own keys. tokenizer_from: a model folder whose tokenizer files (tokenizer.json,
    tokenizer_config.json, generation_config.json) are copied in, so text prompts work (its
    vocabulary must fit vocab_size). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.setdefault("vocab_size", 384)
    g = np.random.default_rng(seed)

    def r(shape, std):
        return (g.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)
    build = {"mamba": _mamba, "rwkv": _rwkv, "rwkv7": _rwkv7}[family]
    if family == "mamba":
        cfg.setdefault("state_size", 16)
    config, tensors = build(cfg, r)
    config["dtype"] = "bfloat16" if dtype == "bf16" else "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    _save(tensors, folder / "model.safetensors", dtype)
    if tokenizer_from is not None:
        import shutil
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            if (Path(tokenizer_from) / name).is_file():
                shutil.copy(Path(tokenizer_from) / name, folder / name)
    return folder
