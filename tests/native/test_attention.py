"""Causal GQA attention: every ISA variant against the float64 numpy reference.

Tolerance ATT_ATOL = 2e-5 (values are O(1): v ~ N(0,1), out is a convex combination
of v rows): each score is a float32 dot product of hd <= 160 terms of size ~|q||k|/hd,
error ~ sqrt(hd)*u*|s| <= ~1e-5 relative in s and so in the weights; exp adds 2 ulp;
the weighted sum of L <= ~600 rows adds ~sqrt(L)*u. 2e-5 is about 4x the worst seen.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryzjupyter import _native

from . import reference as ref

ATT_ATOL = 2e-5


def make(rng, M, Hq, Hkv, hd, T, qscale=1.0):
    q = (rng.standard_normal((M, Hq, hd)) * qscale).astype(np.float32)
    k = rng.standard_normal((T, Hkv, hd)).astype(np.float32)
    v = rng.standard_normal((T, Hkv, hd)).astype(np.float32)
    return q, k, v


def run(q, k, v, n_past, scale):
    out = np.full(q.shape, np.nan, np.float32)
    _native.attention(out, q, k, v, n_past, scale)
    return out


@pytest.mark.parametrize("M,Hq,Hkv,hd,T,n_past", [
    (1, 1, 1, 1, 1, 0),      # smallest
    (1, 4, 1, 8, 9, 8),      # decode, MQA
    (5, 4, 4, 16, 5, 0),     # prefill, MHA
    (3, 6, 2, 20, 12, 7),    # G = 3 (not a multiple of 4), hd not a multiple of 8
    (2, 10, 2, 33, 40, 30),  # G = 5: one full group of 4 and one of 1, odd hd
    (7, 8, 1, 64, 70, 50),   # G = 8
    (4, 20, 5, 128, 300, 296),  # the BitNet-2B head layout
    (1, 3, 3, 160, 513, 512),
])
def test_matches_reference(isa, rng, M, Hq, Hkv, hd, T, n_past):
    q, k, v = make(rng, M, Hq, Hkv, hd, T, qscale=2.0)
    scale = hd ** -0.5
    out = run(q, k, v, n_past, scale)
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_past, scale), rtol=0, atol=ATT_ATOL)


# prefill shapes of the blocked kernel (float cache, hd % 16 == 0, M * Hkv >= 16): blocks of 8
# query rows x G heads in groups of 8 query vectors, 32 keys and 32 columns at a time
@pytest.mark.parametrize("M,Hq,Hkv,hd,n_past", [
    (64, 20, 5, 128, 0),     # a BitNet-2B prefill chunk from an empty cache
    (64, 20, 5, 128, 512),   # ... after 512 cached rows
    (19, 6, 2, 48, 3),       # G = 3 (groups of 8 vectors cross rows), 48 columns (a half block)
    (17, 8, 1, 32, 0),       # G = 8, one kv head, a 1-row last block
    (16, 5, 5, 16, 14),      # G = 1
    (9, 10, 2, 80, 90),      # G = 5, hd 80
])
def test_prefill_blocks_match_reference(isa, rng, M, Hq, Hkv, hd, n_past):
    q, k, v = make(rng, M, Hq, Hkv, hd, n_past + M, qscale=2.0)
    out = run(q, k, v, n_past, hd ** -0.5)
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_past, hd ** -0.5), rtol=0, atol=ATT_ATOL)


def test_prefill_block_keeps_later_rows_out_of_earlier_ones(isa, rng):
    """Within a block of query rows, row i must not touch keys/values of rows > i, even as 0 * x
    (a non-finite later row would leak into it)."""
    M, Hq, Hkv, hd = 16, 8, 2, 32
    q, k, v = make(rng, M, Hq, Hkv, hd, M)
    want = ref.attention(q, k, v, 0, 0.2)
    k[10] = np.nan
    v[10] = np.inf
    out = run(q, k, v, 0, 0.2)
    np.testing.assert_allclose(out[:10], want[:10], rtol=0, atol=ATT_ATOL)
    assert not np.isfinite(out[10:]).any()


def test_rows_beyond_the_causal_limit_are_ignored(isa, rng):
    q, k, v = make(rng, 3, 4, 2, 16, 20)
    a = run(q, k, v, 5, 0.25)
    k2, v2 = k.copy(), v.copy()
    k2[8:] = np.nan  # rows 8.. lie after the last query's position 7
    v2[8:] = 1e30
    np.testing.assert_array_equal(run(q, k2, v2, 5, 0.25), a)


def test_first_query_sees_only_row_zero(isa, rng):
    q, k, v = make(rng, 2, 2, 1, 8, 2)
    out = run(q, k, v, 0, 1.0)
    np.testing.assert_allclose(out[0, 0], v[0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], v[0, 0], rtol=1e-6)


def test_prefill_equals_decode_steps(isa, rng):
    """M queries at once == M single-query calls at growing n_past (KV-cache decode)."""
    M, Hq, Hkv, hd = 6, 4, 2, 24
    q, k, v = make(rng, M, Hq, Hkv, hd, M + 3)
    full = run(q, k, v, 3, 0.2)
    for i in range(M):
        step = run(np.ascontiguousarray(q[i:i + 1]), k, v, 3 + i, 0.2)
        np.testing.assert_allclose(step[0], full[i], rtol=0, atol=1e-6)


def test_large_scores_stay_finite(isa, rng):
    q, k, v = make(rng, 2, 2, 2, 16, 10, qscale=100.0)  # scores ~ 1e3: exp would overflow unshifted
    out = run(q, k, v, 8, 1.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref.attention(q, k, v, 8, 1.0), rtol=0, atol=ATT_ATOL)


def test_empty(isa):
    """Zero query rows or zero head_dim: accepted, and nothing is written (the outputs are views
    of a guarded buffer whose other rows must keep their sentinel)."""
    guard = np.full((3, 4, 8), 7.0, np.float32)
    z = np.zeros((0, 4, 8), np.float32)
    assert _native.attention(guard[1:1], z, np.zeros((3, 2, 8), np.float32), np.zeros((3, 2, 8), np.float32),
                             3, 1.0) is None
    assert _native.attention(guard[2:2], z, np.zeros((0, 2, 8), np.float32), np.zeros((0, 2, 8), np.float32),
                             0, 1.0) is None
    e = np.zeros((2, 4, 0), np.float32)
    _native.attention(guard[:2, :, :0], e, np.zeros((2, 2, 0), np.float32), np.zeros((2, 2, 0), np.float32), 0, 1.0)
    assert (guard == 7.0).all()


@pytest.mark.parametrize("hd", [40, 48])  # units; blocks (hd % 16 == 0)
def test_threads_identical(rng, threads, hd):
    q, k, v = make(rng, 9, 8, 2, hd, 50)
    a = run(q, k, v, 41, 0.3)
    prev = _native.get_num_threads()
    _native.set_num_threads(1)
    try:
        b = run(q, k, v, 41, 0.3)
    finally:
        _native.set_num_threads(prev)
    np.testing.assert_array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 6), st.integers(1, 3), st.integers(1, 3), st.integers(1, 70),
       st.integers(0, 40), st.integers(0, 2 ** 31))
def test_hypothesis_all_isas(M, G, Hkv, hd, n_past, seed):
    rng = np.random.default_rng(seed)
    q, k, v = make(rng, M, G * Hkv, Hkv, hd, n_past + M + 2)
    want = ref.attention(q, k, v, n_past, hd ** -0.5)
    previous = _native.info()["isa"]          # restored after each level (RYZ_ISA runs)
    for name in _native.info()["supported_isas"]:
        _native.set_isa(name)
        try:
            out = run(q, k, v, n_past, hd ** -0.5)
        finally:
            _native.set_isa(previous)
        np.testing.assert_allclose(out, want, rtol=0, atol=ATT_ATOL, err_msg=name)


def test_argument_errors():
    q = np.zeros((2, 4, 8), np.float32)
    k = np.zeros((5, 2, 8), np.float32)
    out = np.zeros_like(q)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        _native.attention(out, q, np.zeros((5, 3, 8), np.float32), np.zeros((5, 3, 8), np.float32), 0, 1.0)
    with pytest.raises(ValueError, match="n_past is 4"):
        _native.attention(out, q, k, k, 4, 1.0)
    with pytest.raises(ValueError, match="n_past is -1"):
        _native.attention(out, q, k, k, -1, 1.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        _native.attention(out, q, k, k, 0, float("nan"))
    with pytest.raises(ValueError, match="out must not share memory with q"):
        _native.attention(q, q, k, k, 0, 1.0)
    with pytest.raises(ValueError, match=r"k.shape\[2\]"):
        _native.attention(out, q, np.zeros((5, 2, 9), np.float32), np.zeros((5, 2, 9), np.float32), 0, 1.0)
    with pytest.raises(ValueError, match=r"v.shape\[0\]"):
        _native.attention(out, q, k, np.zeros((6, 2, 8), np.float32), 0, 1.0)


def _interrupted_attention(isa, M, H, hd):
    """Start a causal attention of M rows x H heads (q, k, v all ones) at level `isa`, send
    SIGINT after 0.1 s; the call must raise KeyboardInterrupt within a few seconds. Returns out
    (NaN where the call never wrote). A try whose signal came before the call wrote anything (the
    machine held the main thread past the delay) is made again, up to 3 times."""
    import time

    from .sigint import sigint_after

    q = np.ones((M, H, hd), np.float32)
    k = np.ones((M, H, hd), np.float32)
    prev = _native.info()["isa"]
    _native.set_isa(isa)
    try:
        for _ in range(3):
            out = np.full_like(q, np.nan)
            t0 = time.perf_counter()
            with pytest.raises(KeyboardInterrupt), sigint_after(0.1):
                _native.attention(out, q, k, k, 0, hd ** -0.5)
                time.sleep(5)  # only reached if the call ignored the signal; the sleep is interrupted
            if not np.isnan(out).all():
                break
    finally:
        _native.set_isa(prev)
    assert time.perf_counter() - t0 < 4
    assert not np.isnan(out).all(), "the signal came before the call started, 3 times"
    return out


def test_long_prefill_is_interruptible():
    """A long call releases the GIL in chunks and checks for Ctrl-C between them."""
    out = _interrupted_attention("scalar", 4096, 4, 64)  # the slowest variant: seconds of work
    assert np.isnan(out[-1]).all()  # stopped between chunks: the last rows were never computed


def test_long_blocked_prefill_is_interruptible(isa):
    """The blocked prefill kernel (float cache, hd % 16 == 0) checks for Ctrl-C between chunks of
    blocks too."""
    M = 2048 if isa == "scalar" else 8192
    out = _interrupted_attention(isa, M, 8, 128)
    assert np.isnan(out[-1, -1]).all()  # blocks go kv head by kv head: the last one never ran


@pytest.fixture(params=["tiled", "units"])
def variant(request):
    """set_attention_variant: the blocked prefill and streaming decode, or the units they replaced"""
    prev = _native.set_attention_variant(request.param)
    yield request.param
    _native.set_attention_variant(prev)


# prefill (blocks of 8 rows against tiles of 16 keys) and decode (rows in address order) shapes
# under both variants: many tiles, a last tile cut by the causal limit in the middle of a block,
# groups of 4 query vectors crossing rows (G = 3, 5), decode with and without the split
@pytest.mark.parametrize("M,Hq,Hkv,hd,n_past", [
    (64, 20, 5, 128, 700),   # a BitNet-2B prefill chunk deep into a prompt
    (24, 9, 3, 32, 37),      # G = 3, tiles cut at every offset of a block
    (11, 10, 2, 16, 5),      # G = 5, hd 16: one column block
    (1, 20, 5, 128, 2047),   # decode at 2k: 16 parts
    (1, 12, 3, 24, 300),     # decode, G = 4, hd 24 (8-float columns, no 16-column block)
])
def test_variants_match_reference(isa, variant, rng, M, Hq, Hkv, hd, n_past):
    q, k, v = make(rng, M, Hq, Hkv, hd, n_past + M + 5, qscale=2.0)
    k[n_past + M:] = np.nan  # past every query's causal limit: must never be read
    v[n_past + M:] = np.inf
    out = run(q, k, v, n_past, hd ** -0.5)
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_past, hd ** -0.5), rtol=0, atol=ATT_ATOL)


def test_set_attention_variant_rejects_unknown_names():
    with pytest.raises(ValueError, match="'tiled' or 'units'"):
        _native.set_attention_variant("flash")
    assert _native.set_attention_variant("tiled") == "tiled"


@pytest.mark.parametrize("M,Hq,Hkv,hd,n_past", [(1, 20, 5, 128, 1999), (2, 4, 4, 37, 1030),
                                                (1, 2, 1, 16, 4000)])
def test_split_decode_matches_reference(isa, rng, M, Hq, Hkv, hd, n_past):
    """Few (query, kv head) units over long rows: the rows are split into parts whose
    partial softmax results are merged; the result must not depend on the split."""
    q, k, v = make(rng, M, Hq, Hkv, hd, n_past + M, qscale=2.0)
    scale = hd ** -0.5
    out = run(q, k, v, n_past, scale)
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_past, scale), rtol=0, atol=ATT_ATOL)
    prev = _native.get_num_threads()
    try:
        _native.set_num_threads(1)
        np.testing.assert_array_equal(run(q, k, v, n_past, scale), out)  # thread count never matters
    finally:
        _native.set_num_threads(prev)


# ---- int8 KV cache -----------------------------------------------------------------------
def quantize_kv(x):
    q8 = np.empty(x.shape, np.int8)
    d = np.empty(x.shape[:2], np.float32)
    _native.quantize_kv_i8(q8, d, x)
    return q8, d


@pytest.mark.parametrize("hd", [1, 7, 16, 37, 128])
def test_quantize_kv_i8_matches_reference(isa, rng, hd):
    x = (rng.standard_normal((5, 3, hd)) * rng.uniform(0.01, 30, (5, 3, 1))).astype(np.float32)
    x[1, 2] = 0.0
    q8, d = quantize_kv(x)
    rq, rd = ref.quantize_kv_i8(x)
    np.testing.assert_array_equal(q8, rq)
    np.testing.assert_array_equal(d, rd)
    assert d[1, 2] == 0 and not q8[1, 2].any()
    bad = x.copy()
    bad[3, 1, hd - 1] = np.inf
    with pytest.raises(ValueError, match=r"x\[3, 1\] contains NaN or inf"):
        quantize_kv(bad)


def _i8kv_matches_dequantized(rng, M, Hq, Hkv, hd, n_past):
    """attention_i8kv on a quantized random cache equals float attention on the dequantized
    cache (float64 reference); returns (out, q, k, v) for further checks."""
    q, k, v = make(rng, M, Hq, Hkv, hd, n_past + M, qscale=2.0)
    k8, ks = quantize_kv(k)
    v8, vs = quantize_kv(v)
    out = np.full(q.shape, np.nan, np.float32)
    _native.attention_i8kv(out, q, k8, ks, v8, vs, n_past, hd ** -0.5)
    kd = k8.astype(np.float64) * ks[..., None]
    vd = v8.astype(np.float64) * vs[..., None]
    np.testing.assert_allclose(out, ref.attention(q, kd, vd, n_past, hd ** -0.5), rtol=0, atol=ATT_ATOL)
    return out, q, k, v


@pytest.mark.parametrize("M,Hq,Hkv,hd,n_past", [(1, 4, 1, 8, 8), (3, 6, 2, 20, 7), (2, 10, 2, 33, 30),
                                                (4, 20, 5, 128, 296), (1, 20, 5, 128, 1999),
                                                (2, 4, 4, 37, 1030)])
def test_attention_i8kv_equals_float_attention_on_the_dequantized_cache(isa, rng, M, Hq, Hkv, hd, n_past):
    out, q, k, v = _i8kv_matches_dequantized(rng, M, Hq, Hkv, hd, n_past)
    # and close to exact attention: int8 rounding (<= max|row|/254 per value) moves it a little
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_past, hd ** -0.5), rtol=0, atol=0.05)


def test_attention_i8kv_argument_errors():
    q = np.zeros((2, 4, 8), np.float32)
    k8 = np.zeros((5, 2, 8), np.int8)
    s = np.ones((5, 2), np.float32)
    out = np.zeros_like(q)
    with pytest.raises(TypeError, match="k must have dtype int8"):
        _native.attention_i8kv(out, q, k8.astype(np.float32), s, k8, s, 0, 1.0)
    with pytest.raises(ValueError, match=r"k_scales.shape\[1\]"):
        _native.attention_i8kv(out, q, k8, np.ones((5, 3), np.float32), k8, s, 0, 1.0)
    with pytest.raises(ValueError, match="n_past is 4"):
        _native.attention_i8kv(out, q, k8, s, k8, s, 4, 1.0)
    with pytest.raises(ValueError, match=r"^v_scales.shape\[0\] is 4 but must equal k_scales.shape\[0\] \(5\)$"):
        _native.attention_i8kv(out, q, k8, s, k8, np.ones((4, 2), np.float32), 0, 1.0)
    with pytest.raises(ValueError, match="^out must not share memory with v_scales"):
        buf = np.zeros(64, np.float32)
        _native.attention_i8kv(buf.reshape(2, 4, 8), q, k8, s, k8, buf[:10].reshape(5, 2), 0, 1.0)


def test_shape_errors_name_both_arrays():
    """A shape that must follow another array's names both dimensions and both sizes."""
    q = np.zeros((2, 4, 8), np.float32)
    k = np.zeros((5, 2, 8), np.float32)
    with pytest.raises(ValueError, match=r"^out.shape\[2\] is 7 but must equal q.shape\[2\] \(8\)$"):
        _native.attention(np.zeros((2, 4, 7), np.float32), q, k, k, 0, 1.0)
    with pytest.raises(ValueError, match=r"^v.shape\[1\] is 3 but must equal k.shape\[1\] \(2\)$"):
        _native.attention(np.zeros_like(q), q, k, np.zeros((5, 3, 8), np.float32), 0, 1.0)
    x = np.zeros((3, 2, 8), np.float32)
    with pytest.raises(ValueError, match=r"^q8.shape\[1\] is 3 but must equal x.shape\[1\] \(2\)$"):
        _native.quantize_kv_i8(np.zeros((3, 3, 8), np.int8), np.zeros((3, 2), np.float32), x)
    with pytest.raises(ValueError, match=r"^scales.shape\[0\] is 2 but must equal x.shape\[0\] \(3\)$"):
        _native.quantize_kv_i8(np.zeros((3, 2, 8), np.int8), np.zeros((2, 2), np.float32), x)


def test_quantize_kv_i8_outputs_must_not_overlap():
    x = np.ones((3, 2, 8), np.float32)
    buf = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="^scales must not share memory with x"):
        _native.quantize_kv_i8(np.zeros((3, 2, 8), np.int8), x.reshape(-1)[:6].reshape(3, 2), x)
    with pytest.raises(ValueError, match="^q8 must not share memory with scales"):
        _native.quantize_kv_i8(buf.view(np.int8)[:48].reshape(3, 2, 8), buf[:6].reshape(3, 2), x)


# ---- decode units (ryz_attn_plan): one unit covers every kv head of a query row ------------
# The SIMD kernels take rows 4 at a time in the score pass (a short last block repeats its
# last row), v rows in blocks of 16, columns 64 at a time in the v pass, and split long rows
# into a power-of-two number of parts (>= 64 rows each for the float cache, >= 128 for int8)
# merged afterwards. These shapes hit
# every remainder of those blocks, query groups G = 1..8 (a group of 4 heads repeats its last
# head when G is not a multiple of 4), head dims with tails, and 1, 2, 4, 8, 16 parts.
DECODE_CASES = [
    # (M, Hq, Hkv, hd, n_past)
    (1, 20, 5, 128, 0),       # T = 1
    (1, 20, 5, 128, 1),
    (1, 20, 5, 128, 2),
    (1, 20, 5, 128, 14),      # 15 rows: under one v block
    (1, 20, 5, 128, 16),      # 17 rows
    (1, 20, 5, 128, 126),     # 127 rows: one part
    (1, 20, 5, 128, 128),     # 129 rows: 2 parts (float cache), one part (int8)
    (1, 20, 5, 128, 254),     # 255 rows: 2 parts (float), one part (int8)
    (1, 20, 5, 128, 256),     # 257 rows: 4 parts (float), 2 parts of 128 / 129 (int8)
    (1, 20, 5, 128, 1022),    # 8 parts
    (1, 20, 5, 128, 4096),    # 16 parts of 256 / 257 rows
    (1, 5, 5, 128, 700),      # G = 1: every head repeated 4x in a group
    (1, 6, 3, 100, 301),      # G = 2, hd: one full and one partial 64-column v chunk
    (1, 9, 3, 70, 520),       # G = 3, hd 70: v columns 64 + 6
    (1, 10, 2, 33, 390),      # G = 5: groups of 4 and 1, hd not a multiple of 16
    (1, 16, 2, 64, 1500),     # G = 8
    (2, 20, 5, 128, 600),     # M = 2: still few units (10 < 16), split per query row
    (3, 12, 4, 48, 333),      # M = 3, rows of different lengths per query
    (1, 4, 4, 1, 260),        # hd = 1
]


@pytest.mark.parametrize("M,Hq,Hkv,hd,n_past", DECODE_CASES)
def test_decode_units_match_reference(isa, rng, M, Hq, Hkv, hd, n_past):
    q, k, v = make(rng, M, Hq, Hkv, hd, n_past + M, qscale=2.0)
    scale = hd ** -0.5
    out = run(q, k, v, n_past, scale)
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_past, scale), rtol=0, atol=ATT_ATOL)


@pytest.mark.parametrize("M,Hq,Hkv,hd,n_past", DECODE_CASES)
def test_decode_units_i8kv_match_reference(isa, rng, M, Hq, Hkv, hd, n_past):
    _i8kv_matches_dequantized(rng, M, Hq, Hkv, hd, n_past)


@pytest.mark.parametrize("i8", [False, True])
def test_decode_split_identical_for_1_and_2_threads(isa, rng, i8):
    """The split depends on the shapes only: 1 and 2 threads give the same bits, and rows
    past the causal limit are never read."""
    M, Hq, Hkv, hd, n_past = 1, 20, 5, 128, 2100
    q, k, v = make(rng, M, Hq, Hkv, hd, n_past + 40)
    k[n_past + 1:] = np.nan
    v[n_past + 1:] = np.nan
    if i8:
        k8, ks = quantize_kv(np.nan_to_num(k))
        v8, vs = quantize_kv(np.nan_to_num(v))
        ks[n_past + 1:] = np.nan
        vs[n_past + 1:] = np.nan

    def call():
        out = np.full(q.shape, np.nan, np.float32)
        if i8:
            _native.attention_i8kv(out, q, k8, ks, v8, vs, n_past, hd ** -0.5)
        else:
            _native.attention(out, q, k, v, n_past, hd ** -0.5)
        return out

    prev = _native.get_num_threads()
    try:
        _native.set_num_threads(1)
        a = call()
        _native.set_num_threads(2)
        b = call()
    finally:
        _native.set_num_threads(prev)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


# ---- attention_segments: the encoder's bidirectional attention within packed texts ---------
@pytest.mark.parametrize("lengths,H,hd", [([1], 1, 4), ([3, 1, 17], 12, 32), ([256, 2, 40], 4, 37),
                                          ([5] * 30, 2, 16)])
def test_segments_match_reference(isa, rng, lengths, H, hd):
    T = sum(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    q, k, v = (rng.standard_normal((T, H, hd)).astype(np.float32) for _ in range(3))
    out = np.full_like(q, np.nan)
    _native.attention_segments(out, q, k, v, offsets, 1 / np.sqrt(hd))
    np.testing.assert_allclose(out, ref.attention_segments(q, k, v, offsets, 1 / np.sqrt(hd)), atol=ATT_ATOL)


def test_segments_do_not_see_each_other(isa, rng):
    """Changing one text's keys and values leaves the other texts' outputs bitwise unchanged."""
    offsets = np.array([0, 4, 9], np.int64)
    q, k, v = (rng.standard_normal((9, 2, 8)).astype(np.float32) for _ in range(3))
    a = np.empty_like(q)
    _native.attention_segments(a, q, k, v, offsets, 0.3)
    k[4:] += 5
    v[4:] -= 3
    b = np.empty_like(q)
    _native.attention_segments(b, q, k, v, offsets, 0.3)
    np.testing.assert_array_equal(a[:4], b[:4])
    assert not np.allclose(a[4:], b[4:])


def test_segments_argument_errors():
    q = np.zeros((5, 2, 4), np.float32)
    with pytest.raises(ValueError, match="start at 0 and end at T"):
        _native.attention_segments(np.empty_like(q), q, q, q, np.array([0, 4], np.int64), 1.0)
    with pytest.raises(ValueError, match="increase strictly"):
        _native.attention_segments(np.empty_like(q), q, q, q, np.array([0, 3, 3, 5], np.int64), 1.0)
    with pytest.raises(ValueError, match="share memory"):
        _native.attention_segments(q, q, q, q, np.array([0, 5], np.int64), 1.0)
    with pytest.raises(ValueError, match=r"^k.shape\[1\] is 3 but must equal q.shape\[1\] \(2\)$"):
        _native.attention_segments(np.empty_like(q), q, np.zeros((5, 3, 4), np.float32), q,
                                   np.array([0, 5], np.int64), 1.0)
    with pytest.raises(ValueError, match=r"^out.shape\[0\] is 4 but must equal q.shape\[0\] \(5\)$"):
        _native.attention_segments(np.zeros((4, 2, 4), np.float32), q, q, q, np.array([0, 5], np.int64), 1.0)
    buf = np.zeros(40, np.float32)                            # out over the offsets' memory: refused
    off = buf.view(np.int64)[:2]
    off[:] = [0, 5]
    with pytest.raises(ValueError, match="^out must not share memory with offsets"):
        _native.attention_segments(buf.reshape(5, 2, 4), q, q, q, off, 1.0)
    with pytest.raises(TypeError):
        _native.attention_segments(np.empty_like(q), q, q, q, np.array([0, 5], np.int32), 1.0)
    with pytest.raises(ValueError):
        _native.attention_segments(np.empty_like(q), q, q[:4], q, np.array([0, 5], np.int64), 1.0)
