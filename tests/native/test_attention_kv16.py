"""float16 / bfloat16 KV cache: store_kv16 (round to nearest even) and attention_kv16 at every ISA
level against the float64 reference on the widened cache (ATT_ATOL: the 16-bit values widen
exactly, so the float32 kernels' error model of test_attention.py holds), and the rounding's
effect against the exact float32 cache."""
import numpy as np
import pytest

from ryzjupyter import _native

from . import reference as ref
from .test_attention import ATT_ATOL, make

FORMATS = ("f16", "bf16")
DTYPE = {"f16": np.float16, "bf16": np.uint16}
# |attention(rounded cache) - attention(exact cache)| for v, k ~ N(0, 1), q ~ N(0, 4): each
# value moves by at most 2^-11 (f16) / 2^-8 (bf16) relative; outputs (convex combinations of v
# rows, weights moved through exp of scores off by ~|s| u) move ~u * a few. Measured worst over
# these shapes with seeds 0-2: f16 1.7e-3, bf16 1.4e-2; bounds about 3x that.
EXACT_ATOL = {"f16": 5e-3, "bf16": 4e-2}


def store(x, fmt):
    dst = np.empty(x.shape, DTYPE[fmt])
    _native.store_kv16(dst, np.ascontiguousarray(x, np.float32), fmt)
    return dst


def widened(bits, fmt):
    if fmt == "f16":
        return bits.astype(np.float64)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("fmt", FORMATS)
def test_store_rounds_to_nearest_even(rng, fmt):
    x = (rng.standard_normal((64, 3, 37)) * 10.0 ** rng.integers(-6, 4, (64, 3, 1))).astype(np.float32)
    if fmt == "f16":      # subnormals, ties between float16 neighbours, the largest finite values
        x[0, 0, :6] = [2.0 ** -25, 3 * 2.0 ** -25, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 65504.0, 65519.0]
        x[0, 1, :4] = [-0.0, 2.0 ** -14 - 2.0 ** -25, 1e-9, -6e-8]
    else:                 # ties between bfloat16 neighbours
        x[0, 0, :4] = [1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8), 3.0e38]
    bits, _ = ref.round_kv16(x, fmt)
    np.testing.assert_array_equal(store(x, fmt).view(np.uint16), bits)


@pytest.mark.parametrize("fmt", FORMATS)
def test_store_refuses_nan_inf_and_f16_overflow(fmt):
    x = np.ones((4, 2, 8), np.float32)
    for bad in (np.nan, np.inf, 70000.0 if fmt == "f16" else None):
        if bad is None:
            continue
        y = x.copy()
        y[2, 1, 3] = bad
        with pytest.raises(ValueError, match=r"x\[2, 1\] holds NaN or inf"):
            store(y, fmt)
    if fmt == "bf16":
        y = x.copy()
        y[1, 0, 0] = 70000.0                 # bfloat16 has float32's range
        assert widened(store(y, fmt), fmt)[1, 0, 0] == 70144.0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M,Hq,Hkv,hd,n_past", [
    (1, 1, 1, 1, 0),          # smallest
    (1, 4, 1, 8, 8),          # decode, MQA
    (3, 6, 2, 20, 7),         # G = 3, hd not a multiple of 8
    (2, 10, 2, 33, 30),       # G = 5, odd hd
    (4, 20, 5, 128, 296),     # BitNet-2B heads, units
    (1, 20, 5, 128, 1999),    # decode split into parts (flash-decoding)
    (1, 3, 3, 160, 512),
    (64, 20, 5, 128, 512),    # prefill blocks after 512 cached rows
    (19, 6, 2, 48, 3),        # prefill blocks, G = 3
    (9, 10, 2, 80, 90),       # prefill blocks, G = 5, hd 80
])
@pytest.mark.parametrize("variant", ["tiled", "units"])
def test_attention_kv16_equals_float_attention_on_the_widened_cache(isa, rng, fmt, M, Hq, Hkv, hd, n_past, variant):
    q, k, v = make(rng, M, Hq, Hkv, hd, n_past + M + 1, qscale=2.0)
    kb, vb = store(k, fmt), store(v, fmt)
    out = np.full(q.shape, np.nan, np.float32)
    prev = _native.set_attention_variant(variant)       # tiled: streaming decode, blocked prefill
    try:
        _native.attention_kv16(out, q, kb, vb, n_past, hd ** -0.5, fmt)
    finally:
        _native.set_attention_variant(prev)
    scale = hd ** -0.5
    np.testing.assert_allclose(out, ref.attention(q, widened(kb, fmt), widened(vb, fmt), n_past, scale),
                               rtol=0, atol=ATT_ATOL)
    # and near the exact float32 cache: the rounding moves the output a little
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_past, scale), rtol=0, atol=EXACT_ATOL[fmt])


@pytest.mark.parametrize("fmt", FORMATS)
def test_attention_kv16_rows_past_the_causal_limit_are_ignored(isa, rng, fmt):
    for M, n_past in ((1, 300), (20, 5)):    # decode units, prefill blocks
        q, k, v = make(rng, M, 8, 2, 32, n_past + M + 8)
        kb, vb = store(k, fmt), store(v, fmt)
        out = np.empty(q.shape, np.float32)
        _native.attention_kv16(out, q, kb, vb, n_past, 0.3, fmt)
        kb[n_past + M:], vb[n_past + M:] = 0x7e00 if fmt == "f16" else 0x7fc0, 0x7c00 if fmt == "f16" else 0x7f80
        out2 = np.empty(q.shape, np.float32)
        _native.attention_kv16(out2, q, kb, vb, n_past, 0.3, fmt)      # NaN keys, inf values there
        np.testing.assert_array_equal(out2, out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_attention_kv16_threads_identical(rng, fmt):
    q, k, v = make(rng, 1, 20, 5, 128, 2101)
    kb, vb = store(k, fmt), store(v, fmt)
    prev = _native.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            _native.set_num_threads(n)
            out = np.empty(q.shape, np.float32)
            _native.attention_kv16(out, q, kb, vb, 2100, 128 ** -0.5, fmt)
            outs.append(out)
    finally:
        _native.set_num_threads(prev)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_attention_kv16_argument_errors():
    q = np.zeros((2, 4, 8), np.float32)
    out = np.zeros_like(q)
    h = np.zeros((5, 2, 8), np.float16)
    with pytest.raises(ValueError, match="fmt must be 'f16'.*or 'bf16'.*got 'fp8'"):
        _native.attention_kv16(out, q, h, h, 0, 1.0, "fp8")
    with pytest.raises(TypeError, match="k must have dtype uint16"):
        _native.attention_kv16(out, q, h, h, 0, 1.0, "bf16")
    with pytest.raises(TypeError, match="k must have dtype float16"):
        _native.attention_kv16(out, q, h.view(np.uint16), h.view(np.uint16), 0, 1.0, "f16")
    with pytest.raises(ValueError, match="n_past is 4"):
        _native.attention_kv16(out, q, h, h, 4, 1.0, "f16")
    with pytest.raises(ValueError, match="fmt must be"):
        _native.store_kv16(h, np.zeros((5, 2, 8), np.float32), "f32")
    with pytest.raises(ValueError, match=r"x.shape\[2\]"):
        _native.store_kv16(h, np.zeros((5, 2, 9), np.float32), "f16")
