"""The fused decode layer with T5-packed weights (5 trits a byte, ``layout="t5"``): bitwise the
same logits and KV cache as the Python forward pass over the same T5 weights, and as the I2
model (same trits, same integer sums), on every ISA level with 1 and 2 threads."""
import json
from pathlib import Path

import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.families import bitnet_decode
from ryzjupyter.families.bitnet import LINEARS as _LINEARS
from ryzjupyter.families.bitnet import BitNetModel
from .test_fused import layer0_args

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "bitnet"


def _seq():
    man = json.loads((FIX / "manifest.json").read_text())
    return [int(t) for t in man["sequences"][0]]


@pytest.mark.parametrize("fmt,kv", [("packed", "f32"), ("onebitllm", "int8"), ("packed", "int8")])
def test_fused_t5_equals_forward_and_i2(fmt, kv, isa, threads):
    seq = _seq()
    i2 = BitNetModel(FIX / fmt, lm_head="f32", kv_cache=kv)
    t5 = BitNetModel(FIX / fmt, lm_head="f32", kv_cache=kv)
    assert bitnet_decode.ensure_i2(i2)
    t5.repack_linears("t5")
    assert bitnet_decode.ensure_i2(t5) and bitnet_decode.supported(t5)   # an all-T5 model stays T5
    assert {getattr(lw, n).layout for lw in t5.weights.layers for n in _LINEARS} == {"t5"}
    i2.fused_decode = t5.fused_decode = False
    ci, cp, cf = i2.new_cache(), t5.new_cache(), t5.new_cache()
    for m, c in ((i2, ci), (t5, cp), (t5, cf)):
        m.forward(seq[:4], c)
    for tok in seq[4:10]:
        ref = i2.forward([tok], ci)
        py = t5.forward([tok], cp)
        got = bitnet_decode.forward_one(t5, [tok], cf)
        np.testing.assert_array_equal(py, ref)
        np.testing.assert_array_equal(got, ref)
    n = len(ci)
    for l in range(i2.config.n_layers):
        np.testing.assert_array_equal(cf.k[l][:n], ci.k[l][:n])
        np.testing.assert_array_equal(cf.v[l][:n], ci.v[l][:n])


def test_mixed_layouts_are_repacked_to_i2():
    model = BitNetModel(FIX / "packed", lm_head="f32")
    model.weights.layers[0].wq.repack("t5")
    model._fused_ok = None
    assert not bitnet_decode.supported(model)
    assert bitnet_decode.ensure_i2(model)
    assert {getattr(lw, n).layout for lw in model.weights.layers for n in _LINEARS} == {"i2"}


def test_layout_argument_is_checked():
    x, c, ws, mults, eps, theta, scale, act = layer0_args(BitNetModel(FIX / "packed", lm_head="f32"))
    with pytest.raises(ValueError, match="layout must be"):
        _native.bitnet_decode_layer(x, c.k[0], c.v[0], 0, ws, mults, eps, theta, scale, act, None, None, "q4")
    with pytest.raises(TypeError):
        _native.bitnet_decode_layer(x, c.k[0], c.v[0], 0, ws, mults, eps, theta, scale, act, None, None, 5)


def test_t5_row_bytes_are_checked(rng):
    """A layer whose dims tell I2 and T5 rows apart (D = 640: 192 vs 128 bytes a row)."""
    D, Q, KVD, I, hd = 640, 640, 320, 960, 64
    t = {n: rng.integers(-1, 2, shp, dtype=np.int8) for n, shp in
         (("wq", (Q, D)), ("wk", (KVD, D)), ("wv", (KVD, D)), ("wo", (D, Q)),
          ("w_gate", (I, D)), ("w_up", (I, D)), ("w_down", (D, I)))}

    def packed(lay):
        out = {}
        for n, tr in t.items():
            p = np.empty((tr.shape[0], getattr(_native, f"{lay}_row_bytes")(tr.shape[1])), np.uint8)
            getattr(_native, f"pack_{lay}")(p, tr)
            out[n] = p
        return out
    ones = {n: np.ones(k, np.float32) for n, k in (("D", D), ("Q", Q), ("I", I))}

    def ws(p):
        return (ones["D"], p["wq"], p["wk"], p["wv"], ones["Q"], p["wo"], ones["D"], p["w_gate"],
                p["w_up"], ones["I"], p["w_down"])
    p2, p5 = packed("i2"), packed("t5")
    mults = (0.5,) * 7
    x0 = rng.standard_normal(D).astype(np.float32)
    outs = {}
    for lay, p in (("i2", p2), ("t5", p5)):
        kc, vc = np.zeros((4, KVD // hd, hd), np.float32), np.zeros((4, KVD // hd, hd), np.float32)
        x = x0.copy()
        for pos in range(3):
            _native.bitnet_decode_layer(x, kc, vc, pos, ws(p), mults, 1e-5, 1e4, 0.125, 0, None, None, lay)
        outs[lay] = (x, kc, vc)
    for a, b in zip(outs["i2"], outs["t5"]):
        np.testing.assert_array_equal(a, b)
    kc, vc = np.zeros((4, KVD // hd, hd), np.float32), np.zeros((4, KVD // hd, hd), np.float32)
    with pytest.raises(ValueError, match="t5_row_bytes"):
        _native.bitnet_decode_layer(x0.copy(), kc, vc, 0, ws(p2), mults, 1e-5, 1e4, 0.125, 0, None, None, "t5")
    with pytest.raises(ValueError, match="i2_row_bytes"):
        _native.bitnet_decode_layer(x0.copy(), kc, vc, 0, ws(p5), mults, 1e-5, 1e4, 0.125, 0)
