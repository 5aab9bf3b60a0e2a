"""Random-weight BitNet b1.58 model folders of any shape, written with numpy (no torch).

For benchmarks and tests that need the real sizes without a download:

    from ryzjupyter.families.random_bitnet import write_random_bitnet, SHAPES_2B4T
    write_random_bitnet("/tmp/bitnet-2b-random", **SHAPES_2B4T)   # ~1.2 GB, a few seconds

The folder is in the microsoft/bitnet-b1.58-2B-4T layout: uint8 ternary weights packed 4 per
byte (blocked along output rows), a per-tensor `weight_scale` (= 1/absmean, linear_class
"bitlinear": divide), bf16 embeddings and norms, tied lm_head. `fmt="online"` writes bf16 latent
weights (the -bf16 checkpoint), `fmt="float"` a BitNet config without quantization_config.
A byte-level tokenizer (256 byte tokens + Llama-3 style special tokens) is written alongside
unless `tokenizer_from` names a folder to copy tokenizer files from.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

SHAPES_2B4T = dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
                   num_key_value_heads=5, vocab_size=128256, max_position_embeddings=4096)

# all bytes whose four 2-bit fields are in {0, 1, 2} (i.e. encode trits -1, 0, +1)
_VALID_BYTES = np.array([a | (b << 2) | (c << 4) | (d << 6) for a in range(3) for b in range(3)
                         for c in range(3) for d in range(3)], dtype=np.uint8)

_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
_TEMPLATE = ("{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
             "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}<|eot_id|>{% endfor %}"
             "{% if add_generation_prompt %}Assistant: {% endif %}")


def bitnet_config(*, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
                  vocab_size, max_position_embeddings=4096, fmt="packed", rope_theta=500000.0,
                  bos_token_id=None, eos_token_id=None) -> dict:
    cfg = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
        "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads, "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings, "rms_norm_eps": 1e-5, "rope_theta": rope_theta,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "attention_bias": False,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    }
    if fmt == "packed":
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "bitlinear",
                                      "quantization_mode": "offline"}
    elif fmt == "online":
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                      "quantization_mode": "online"}
    elif fmt != "float":
        raise ValueError(f"fmt must be 'packed', 'online' or 'float', got {fmt!r}")
    return cfg


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


class _SafetensorsWriter:
    """Writes tensors one by one (chunked) so multi-GB files need little memory."""

    def __init__(self, path, entries):
        # entries: list of (name, dtype_str, shape, nbytes)
        header, off = {}, 0
        for name, dt, shape, nbytes in entries:
            header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, arr):
        self.f.write(np.ascontiguousarray(arr).tobytes())

    def close(self):
        self.f.close()


def _byte_tokenizer(vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    alphabet = sorted(ByteLevel.alphabet(), key=lambda c: (len(c), c))
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_SPECIALS)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"vocab_size must be >= {tok.get_vocab_size()} for the byte tokenizer")
    return tok


def write_random_bitnet(folder, *, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                        max_position_embeddings=4096, fmt="packed", seed=0, tokenizer_from=None,
                        rope_theta=500000.0) -> Path:
    """Write a random BitNet model folder; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, I, L = hidden_size, intermediate_size, num_hidden_layers
    hd = H // num_attention_heads
    if hd * num_attention_heads != H or num_attention_heads % num_key_value_heads:
        raise ValueError("hidden_size must divide into num_attention_heads heads, and num_attention_heads "
                         "must be a multiple of num_key_value_heads")
    kv = num_key_value_heads * hd
    linears = [("self_attn.q_proj", H, H), ("self_attn.k_proj", kv, H), ("self_attn.v_proj", kv, H),
               ("self_attn.o_proj", H, H), ("mlp.gate_proj", I, H), ("mlp.up_proj", I, H),
               ("mlp.down_proj", H, I)]
    norms = [("input_layernorm", H), ("self_attn.attn_sub_norm", H), ("post_attention_layernorm", H),
             ("mlp.ffn_sub_norm", I)]
    if fmt == "packed" and any(n % 4 for _, n, _ in linears):
        raise ValueError("packed format needs every output size divisible by 4")

    entries = [("model.embed_tokens.weight", "BF16", (vocab_size, H), vocab_size * H * 2),
               ("model.norm.weight", "BF16", (H,), H * 2)]
    for l in range(L):
        p = f"model.layers.{l}."
        for name, n in norms:
            entries.append((p + name + ".weight", "BF16", (n,), n * 2))
        for name, n, k in linears:
            if fmt == "packed":
                entries.append((p + name + ".weight", "U8", (n // 4, k), n // 4 * k))
                entries.append((p + name + ".weight_scale", "F32", (1,), 4))
            else:
                entries.append((p + name + ".weight", "BF16", (n, k), n * k * 2))

    # a pool of bf16 normal values; big tensors are slices of it at random offsets (fast, and
    # random enough for benchmarks; small tensors are drawn fresh)
    pool = _bf16_bits(rng.standard_normal(1 << 21, dtype=np.float32))
    pool = np.concatenate([pool, pool])
    pool_small = _bf16_bits(0.03 * rng.standard_normal(1 << 21, dtype=np.float32))
    pool_small = np.concatenate([pool_small, pool_small])

    def from_pool(src, count):
        out = np.empty(count, np.uint16)
        for o in range(0, count, 1 << 20):
            n = min(1 << 20, count - o)
            start = int(rng.integers(0, 1 << 21))
            out[o:o + n] = src[start:start + n]
        return out

    w = _SafetensorsWriter(folder / "model.safetensors", entries)
    try:
        for name, dt, shape, _ in entries:
            if name == "model.embed_tokens.weight":
                rows = max(1, (1 << 22) // H)
                for r0 in range(0, vocab_size, rows):
                    r1 = min(vocab_size, r0 + rows)
                    w.write(from_pool(pool, (r1 - r0) * H))
            elif name.endswith("norm.weight"):
                w.write(_bf16_bits(1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)))
            elif name.endswith(".weight_scale"):
                # 1/absmean of latent weights of typical magnitude 0.02..0.05
                w.write(np.array([1.0 / rng.uniform(0.02, 0.05)], np.float32))
            elif dt == "U8":
                n, k = shape
                rows = max(1, (1 << 24) // k)
                for r0 in range(0, n, rows):
                    r1 = min(n, r0 + rows)
                    w.write(_VALID_BYTES[rng.integers(0, 81, size=(r1 - r0, k), dtype=np.uint8)])
            else:
                n, k = shape
                rows = max(1, (1 << 22) // k)
                for r0 in range(0, n, rows):
                    r1 = min(n, r0 + rows)
                    w.write(from_pool(pool_small, (r1 - r0) * k))
    finally:
        w.close()

    if tokenizer_from is not None:
        src = Path(tokenizer_from)
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            if (src / fn).is_file():
                shutil.copy(src / fn, folder / fn)
        tcfg = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").is_file() else {}
        from tokenizers import Tokenizer
        tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
        bos = tk.token_to_id(tcfg.get("bos_token") or "") if isinstance(tcfg.get("bos_token"), str) else None
        eos = tk.token_to_id(tcfg.get("eos_token") or "") if isinstance(tcfg.get("eos_token"), str) else None
    else:
        tk = _byte_tokenizer(vocab_size)
        tk.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": _TEMPLATE,
            "tokenizer_class": "PreTrainedTokenizerFast"}, indent=1))
        bos, eos = tk.token_to_id("<|begin_of_text|>"), tk.token_to_id("<|end_of_text|>")
    cfg = bitnet_config(hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                        vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, fmt=fmt,
                        rope_theta=rope_theta, bos_token_id=bos, eos_token_id=eos)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder
