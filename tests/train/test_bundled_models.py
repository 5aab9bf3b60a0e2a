"""Checks of the bundled demo models that need no torch: file layout, tokenizer and chat template, and an
independent numpy implementation of the BitNet b1.58 forward pass (checkpoint-formats.md 1.3-1.5) that must
reproduce the trainer's own validation NLL on the first windows of the shipped validation text."""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct

import numpy as np
import pytest

MODELS = os.path.join(os.path.dirname(__file__), "..", "..", "ryzjupyter", "models")
NAMES = ["demo", "demo-draft"]
REQUIRED = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "MODEL_CARD.md",
            "validation.txt", "validation_ppl.json", "generation_config.json"]


def folder(name):
    return os.path.join(MODELS, name)


def read_safetensors(path):
    """Minimal reader (numpy has no bfloat16): BF16 -> float32 by shifting, U8/F32 as is."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = data[a:b]
        if v["dtype"] == "BF16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, {"F32": np.float32, "U8": np.uint8}[v["dtype"]])
        out[k] = (arr.reshape(v["shape"]), v["dtype"])
    return out


class NumpyBitNet:
    def __init__(self, path):
        self.cfg = json.load(open(os.path.join(path, "config.json")))
        self.t = {k: a for k, (a, _) in read_safetensors(os.path.join(path, "model.safetensors")).items()}

    def linear(self, name, x):
        p = self.t[name + ".weight"].astype(np.int32)
        trits = np.concatenate([((p >> (2 * i)) & 3) - 1 for i in range(4)], axis=0).astype(np.float32)
        s_w = np.float32(self.t[name + ".weight_scale"].reshape(()))
        s_x = np.float32(127.0) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-5))
        q = np.clip(np.rint(x * s_x), -128, 127)  # rint = half to even, like torch.round
        return (q @ trits.T) / (s_w * s_x)

    def norm(self, name, x):
        eps = np.float32(self.cfg["rms_norm_eps"])
        return self.t[name + ".weight"] * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))

    def forward(self, ids):
        c = self.cfg
        H, Hkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        T = len(ids)
        theta = c.get("rope_parameters", {}).get("rope_theta", c.get("rope_theta"))
        inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
        fr = np.outer(np.arange(T, dtype=np.float32), inv.astype(np.float32))
        cos, sin = np.cos(np.concatenate([fr, fr], -1)), np.sin(np.concatenate([fr, fr], -1))

        def rope(x):  # [T, h, hd]
            rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
            return x * cos[:, None] + rot * sin[:, None]

        h = self.t["model.embed_tokens.weight"][ids]
        mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = self.norm(p + "input_layernorm", h)
            q = rope(self.linear(p + "self_attn.q_proj", x).reshape(T, H, hd))
            k = rope(self.linear(p + "self_attn.k_proj", x).reshape(T, Hkv, hd))
            v = self.linear(p + "self_attn.v_proj", x).reshape(T, Hkv, hd)
            att = np.empty((T, H, hd), np.float32)
            for j in range(H):
                kv = j // (H // Hkv)
                s = q[:, j] @ k[:, kv].T * np.float32(hd ** -0.5) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                att[:, j] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
            a = self.norm(p + "self_attn.attn_sub_norm", att.reshape(T, H * hd))
            h = h + self.linear(p + "self_attn.o_proj", a)
            x = self.norm(p + "post_attention_layernorm", h)
            m = np.maximum(self.linear(p + "mlp.gate_proj", x), 0) ** 2 * self.linear(p + "mlp.up_proj", x)
            h = h + self.linear(p + "mlp.down_proj", self.norm(p + "mlp.ffn_sub_norm", m))
        return self.norm("model.norm", h) @ self.t["model.embed_tokens.weight"].T


@pytest.mark.parametrize("name", NAMES)
def test_files_and_config(name):
    for f in REQUIRED:
        assert os.path.isfile(os.path.join(folder(name), f)), f
    cfg = json.load(open(os.path.join(folder(name), "config.json")))
    assert cfg["model_type"] == "bitnet" and cfg["architectures"] == ["BitNetForCausalLM"]
    assert cfg["quantization_config"] == {"quant_method": "bitnet", "linear_class": "bitlinear",
                                          "quantization_mode": "offline"}
    assert cfg["tie_word_embeddings"] is True and cfg["hidden_act"] == "relu2"
    assert os.path.getsize(os.path.join(folder(name), "model.safetensors")) < 8_000_000
    assert os.path.getsize(os.path.join(folder(name), "validation.txt")) < 200_000
    t = read_safetensors(os.path.join(folder(name), "model.safetensors"))
    assert "lm_head.weight" not in t
    L = cfg["num_hidden_layers"]
    proj = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert len(t) == 2 + L * (4 + 2 * len(proj))
    for i in range(L):
        for pname in proj:
            w, dt = t[f"model.layers.{i}.{pname}.weight"]
            s, sdt = t[f"model.layers.{i}.{pname}.weight_scale"]
            assert dt == "U8" and sdt == "F32" and s.shape == (1,) and s[0] > 1.0  # 1/absmean of small weights
            assert not np.any((w & 3) == 3)  # 2-bit fields hold t+1 in {0,1,2}


@pytest.mark.parametrize("name", NAMES)
def test_validation_file_matches_json(name):
    ref = json.load(open(os.path.join(folder(name), "validation_ppl.json")))
    text = open(os.path.join(folder(name), "validation.txt"), encoding="utf-8").read()
    assert hashlib.sha256(text.encode()).hexdigest() == ref["val_file_sha256"]
    assert math.isclose(math.exp(math.fsum(ref["val_window_nll"]) / ref["val_predicted_tokens"]), ref["val_ppl"],
                        rel_tol=1e-9)


def test_tokenizer_and_chat_template():
    tokenizers = pytest.importorskip("tokenizers")
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    a = open(os.path.join(folder("demo"), "tokenizer.json"), "rb").read()
    b = open(os.path.join(folder("demo-draft"), "tokenizer.json"), "rb").read()
    assert a == b, "the draft must share the main model's tokenizer"
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder("demo"), "tokenizer.json"))
    assert [tok.token_to_id(s) for s in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")] == [0, 1, 2]
    text = open(os.path.join(folder("demo"), "validation.txt"), encoding="utf-8").read()
    assert tok.decode(tok.encode(text[:5000], add_special_tokens=False).ids) == text[:5000]
    tc = json.load(open(os.path.join(folder("demo"), "tokenizer_config.json")))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    s = env.from_string(tc["chat_template"]).render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        add_generation_prompt=True, bos_token=tc["bos_token"], eos_token=tc["eos_token"])
    assert s == "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hello<|eot_id|>Assistant: "
    ids = tok.encode(s, add_special_tokens=False).ids
    assert ids[0] == 0 and ids.count(2) == 2


@pytest.mark.parametrize("name", NAMES)
def test_numpy_forward_reproduces_trainer_nll(name):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder(name), "tokenizer.json"))
    ref = json.load(open(os.path.join(folder(name), "validation_ppl.json")))
    text = open(os.path.join(folder(name), "validation.txt"), encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False).ids
    n_ctx = ref["n_ctx"]
    assert len(ids) == ref["val_tokens"]
    model = NumpyBitNet(folder(name))
    for w in range(2):
        win = np.array(ids[w * n_ctx:(w + 1) * n_ctx])
        logits = model.forward(win[:-1]).astype(np.float64)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll = float((lse - logits[np.arange(len(win) - 1), win[1:]]).sum())
        assert math.isclose(nll, ref["val_window_nll"][w], rel_tol=1e-3), (w, nll, ref["val_window_nll"][w])
