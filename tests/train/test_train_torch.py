"""Trainer checks that need torch (skipped cleanly without it): STE gradients, packing layout, export round trip,
and (when transformers is installed) logits equal to transformers' BitNetForCausalLM."""
from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from ryzjupyter.train.export import export, pack_ternary, round_embeddings_, unpack_ternary  # noqa: E402
from ryzjupyter.train.model import (BitNetConfig, BitNetLM, _BitLinearFn, act_quant_int, load_packed,  # noqa: E402
                                    ternarize, trainable_from_packed)

TINY = BitNetConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)


def test_bitlinear_forward_and_ste_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    y = _BitLinearFn.apply(x, w)
    g = torch.randn_like(y)
    y.backward(g)
    xq, sx = act_quant_int(x.detach())
    t, sw = ternarize(w.detach())
    assert set(t.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(y, (xq / sx) @ (t / sw).T, rtol=1e-5, atol=1e-6)
    assert torch.allclose(x.grad, g @ (t / sw), rtol=1e-5, atol=1e-6)
    assert torch.allclose(w.grad, g.reshape(-1, 8).T @ (xq / sx).reshape(-1, 16), rtol=1e-5, atol=1e-5)


def test_act_quant_rounds_half_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5]])
    q, s = act_quant_int(x)
    assert q.tolist() == [[127.0, 0.0, 2.0, 2.0, -0.0]]


def test_pack_layout_blocked_along_rows():
    t = torch.zeros(8, 3, dtype=torch.int8)
    t[5, 1] = 1  # row 5 = block i=2 (R=2), packed row 1
    p = pack_ternary(t)
    assert p.shape == (2, 3) and p.dtype == torch.uint8
    assert p[1, 1] == (1 | 1 << 2 | 2 << 4 | 1 << 6)
    r = torch.randint(-1, 2, (12, 7), dtype=torch.int8)
    assert torch.equal(unpack_ternary(pack_ternary(r)), r)


def _exported_tiny(folder, seed):
    """A TINY model with perturbed weights, its embedding rounded as shipped, exported to `folder`."""
    torch.manual_seed(seed)
    m = BitNetLM(TINY)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    round_embeddings_(m)
    export(m, str(folder))
    return m


def test_export_round_trip_and_transformers(tmp_path):
    m = _exported_tiny(tmp_path, 1)
    cfg = json.load(open(os.path.join(tmp_path, "config.json")))
    assert cfg["quantization_config"]["linear_class"] == "bitlinear"
    ids = torch.randint(0, 64, (2, 16))
    m2 = load_packed(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(m.eval()(ids), m2(ids))
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = m(ids)
        got = hf(input_ids=ids).logits
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-4


def test_trainable_from_packed_starts_from_the_exported_function(tmp_path):
    """train.py --init: the latent weights rebuilt from a packed export ternarize to the stored trits and
    scales, so the trainable model computes what the export does (and a longer context only moves RoPE)."""
    _exported_tiny(tmp_path, 2)
    fixed = load_packed(str(tmp_path))
    again = trainable_from_packed(str(tmp_path), max_position_embeddings=64)
    assert again.config.max_position_embeddings == 64 and again.training
    for (name, a), b in zip(fixed.named_modules(), again.modules()):
        if hasattr(a, "fixed") and a.fixed is not None:
            t, s = ternarize(b.weight.detach())
            assert b.fixed is None and torch.equal(t, a.fixed[0]), name
            assert torch.allclose(s, a.fixed[1], rtol=1e-6), name
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(ids), fixed(ids), rtol=1e-5, atol=1e-5)
