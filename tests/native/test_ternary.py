"""Ternary kernels (I2, TL and T5 layouts): every ISA variant equals the numpy reference
bit for bit; converters equal transformers' formulas; every entry point refuses bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryzjupyter import _native
from ryzjupyter.engine import ternary as T

from . import reference as ref

LAYOUTS = ("i2", "tl", "t5")
KS = [1, 3, 4, 5, 63, 64, 65, 255, 256, 257, 319, 320, 321, 511, 640, 1000, 2560]
SHAPES = [(1, 1, 1), (1, 7, 300), (1, 1, 2560), (2, 5, 17), (3, 9, 256), (4, 4, 257),
          (5, 13, 1000), (7, 33, 100), (9, 6, 513), (17, 5, 64), (66, 19, 130),
          (2, 64, 100), (3, 130, 300), (1, 200, 257), (5, 129, 2560), (1, 9, 641), (6, 11, 960), (131, 6, 641),
          # decode (M = 1) with every I2 tile tail: N % 4 = 1 (9 above), 2, 3 (7 above), 0 (200 above)
          (1, 6, 513),
          # several 64 KiB row blocks of the AVX-512 GEMM walk (100 rows each at K = 2560) with a
          # ragged last one, and a token block plus a tail
          (70, 301, 2560),
          # the few-token kernels of the verify pass (M = 2..16): token groups of 4 with a tail, row pairs
          # with an odd row, tiles with 1-3 rows, several 64-row chunks, a K tail past 8 blocks
          (8, 37, 513), (10, 5, 64), (12, 130, 2560), (13, 21, 640), (15, 3, 2049), (16, 67, 257),
          # the 5-token tile (4 + 1 tokens as one pass): alone with 1-3 row tails, after a 64-token block
          (5, 7, 2560), (5, 6, 257), (69, 10, 300)]


def packed_of(lay, t):
    p = np.empty((t.shape[0], getattr(_native, f"{lay}_row_bytes")(t.shape[1])), np.uint8)
    getattr(_native, f"pack_{lay}")(p, t)
    return p


def matmul(lay, p, q):
    out = np.empty((q.shape[0], p.shape[0]), np.int32)
    getattr(_native, f"ternary_matmul_{lay}")(out, p, q)
    return out


def linear(lay, p, x, w_mult):
    out = np.empty((x.shape[0], p.shape[0]), np.float32)
    getattr(_native, f"ternary_linear_{lay}")(out, p, x, w_mult)
    return out


def rand_trits(rng, N, K):
    return rng.integers(-1, 2, (N, K), dtype=np.int8)


# ---- layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize("K", KS)
def test_pack_matches_layout_definition(rng, K):
    t = rand_trits(rng, 7, K)  # one whole I2 tile of 4 rows and a last one of 3
    assert _native.i2_row_bytes(K) == ref.i2_row_bytes(K)
    assert _native.tl_row_bytes(K) == ref.tl_row_bytes(K)
    assert _native.t5_row_bytes(K) == ref.t5_row_bytes(K)
    np.testing.assert_array_equal(packed_of("i2", t), ref.pack_i2(t))
    np.testing.assert_array_equal(packed_of("tl", t), ref.pack_tl(t))
    np.testing.assert_array_equal(packed_of("t5", t), ref.pack_t5(t))
    np.testing.assert_array_equal(ref.unpack_t5(packed_of("t5", t), K), t)
    for lay in LAYOUTS:
        u = np.empty_like(t)
        getattr(_native, f"unpack_{lay}")(u, packed_of(lay, t))
        np.testing.assert_array_equal(u, t)


def test_row_bytes_values():
    assert _native.i2_row_bytes(0) == 0 and _native.i2_row_bytes(2560) == 640
    assert _native.i2_row_bytes(6912) == 1728 and _native.i2_row_bytes(257) == 128
    assert _native.tl_row_bytes(2560) == 640 and _native.tl_row_bytes(5) == 2
    assert _native.t5_row_bytes(2560) == 512 and _native.t5_row_bytes(6912) == 1408
    assert _native.t5_row_bytes(320) == 64 and _native.t5_row_bytes(321) == 128
    with pytest.raises(ValueError, match="K must be"):
        _native.i2_row_bytes(-1)


def test_unpack_refuses_invalid_codes():
    p = np.full((1, 64), 0x55, np.uint8)
    p[0, 7] = 0b11000101
    with pytest.raises(ValueError, match=r"packed\[0, 7\]"):
        _native.unpack_i2(np.empty((1, 256), np.int8), p)
    p = np.full((1, 2), 0x44, np.uint8)
    p[0, 1] = 0x9A
    with pytest.raises(ValueError, match=r"packed\[0, 1\]"):
        _native.unpack_tl(np.empty((1, 8), np.int8), p)
    valid = {int(b) for b in ref.pack_t5(_all_five_trit_columns()).ravel()}
    assert len(valid) == 243
    for b in sorted(set(range(256)) - valid):
        p = np.full((1, 64), 0x80, np.uint8)  # 0x80: codes (1, 1, 1, 1, 1), all zero trits
        p[0, 9] = b
        with pytest.raises(ValueError, match=r"packed\[0, 9\] = %d is not a valid T5 byte" % b):
            _native.unpack_t5(np.empty((1, 320), np.int8), p)


def _all_five_trit_columns():
    """[1, 320] trits whose 64 bytes cover all 243 five-code combinations (four rows)."""
    combos = np.array(np.meshgrid(*[[-1, 0, 1]] * 5, indexing="ij")).reshape(5, -1).T  # [243, 5]
    rows = []
    for r0 in range(0, 243, 64):
        c = np.zeros((64, 5), np.int8)
        part = combos[r0:r0 + 64]
        c[:len(part)] = part
        rows.append(c.T.reshape(320))  # position 64 i + j holds code i of byte j
    return np.array(rows, np.int8)


def test_t5_encodes_all_243_combinations_exactly(isa, rng):
    t = _all_five_trit_columns()
    p = packed_of("t5", t)
    assert len(set(p.ravel().tolist())) == 243
    u = np.empty_like(t)
    _native.unpack_t5(u, p)
    np.testing.assert_array_equal(u, t)
    q = rng.integers(-128, 128, (5, 320), dtype=np.int8)
    np.testing.assert_array_equal(matmul("t5", p, q), ref.ternary_matmul(t, q))


def test_i2_whole_tiles_slice_into_matrices(rng):
    # I2 interleaves rows in tiles of 4: the first 8 rows of a packed 11-row matrix are the
    # packed 8-row matrix (what test_interrupt and any row split at tile boundaries rely on)
    t = rand_trits(rng, 11, 600)
    p = packed_of("i2", t)
    np.testing.assert_array_equal(p[:8], packed_of("i2", t[:8]))
    assert not np.array_equal(p[:6], packed_of("i2", t[:6]))   # a cut inside a tile is not
    q = rng.integers(-128, 128, (1, 600), dtype=np.int8)
    np.testing.assert_array_equal(matmul("i2", np.ascontiguousarray(p[:8]), q), ref.ternary_matmul(t[:8], q))


# ---- kernels vs reference ------------------------------------------------------------------

@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matmul_matches_reference(isa, rng, lay, M, N, K):
    t = rand_trits(rng, N, K)
    q = rng.integers(-128, 128, (M, K), dtype=np.int8)
    np.testing.assert_array_equal(matmul(lay, packed_of(lay, t), q), ref.ternary_matmul(t, q))


@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize("M,N,K", SHAPES[::2])
def test_linear_matches_reference(isa, rng, lay, M, N, K):
    t = rand_trits(rng, N, K)
    x = (rng.standard_normal((M, K)) * rng.uniform(0.01, 50, (M, 1))).astype(np.float32)
    w_mult = 0.0371
    np.testing.assert_array_equal(linear(lay, packed_of(lay, t), x, w_mult),
                                  ref.ternary_linear(t, x, w_mult))


@pytest.mark.parametrize("lay", LAYOUTS)
def test_empty_and_zero_rows(isa, rng, lay):
    t = rand_trits(rng, 6, 70)
    p = packed_of(lay, t)
    assert matmul(lay, p, np.zeros((0, 70), np.int8)).shape == (0, 6)
    assert linear(lay, p, np.zeros((0, 70), np.float32), 1.0).shape == (0, 6)
    empty = np.zeros((0, _native.__dict__[f"{lay}_row_bytes"](70)), np.uint8)
    assert matmul(lay, empty, np.ones((3, 70), np.int8)).shape == (3, 0)
    x = np.zeros((3, 70), np.float32)
    x[1] = rng.standard_normal(70)
    out = linear(lay, p, x, 2.0)
    np.testing.assert_array_equal(out, ref.ternary_linear(t, x, 2.0))
    assert not out[0].any() and not out[2].any()
    # K = 0: every sum is empty
    z = np.zeros((2, 0), np.int8)
    np.testing.assert_array_equal(matmul(lay, packed_of(lay, np.zeros((4, 0), np.int8)), z), 0)


@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize("wval", [-1, 1])
@pytest.mark.parametrize("qval", [-128, 127])
def test_extremes_do_not_overflow(isa, lay, wval, qval):
    # all-(+-1) weights against saturated activations: the largest sums the kernels can see
    # (the AVX2 int16 partial sums are flushed before they can overflow)
    K = 8192 + 37
    t = np.full((5, K), wval, np.int8)
    q = np.full((6, K), qval, np.int8)
    q[3, ::2] = -128 if qval == 127 else 127
    out = matmul(lay, packed_of(lay, t), q)
    np.testing.assert_array_equal(out, ref.ternary_matmul(t, q))
    assert out[0, 0] == wval * qval * K


@pytest.mark.parametrize("lay", LAYOUTS)
def test_non_finite_input_rows_are_refused(isa, lay):
    x = np.ones((3, 40), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(ValueError, match="row 1 contains NaN or inf"):
        linear(lay, packed_of(lay, np.ones((2, 40), np.int8)), x, 1.0)


@settings(max_examples=40, deadline=None)
@given(M=st.integers(0, 9), N=st.integers(1, 150), K=st.integers(1, 700), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_all_isas_both_layouts(M, N, K, seed):
    rng = np.random.default_rng(seed)
    t = rand_trits(rng, N, K)
    q = rng.integers(-128, 128, (M, K), dtype=np.int8)
    expected = ref.ternary_matmul(t, q)
    previous = _native.info()["isa"]
    try:
        for name in _native.info()["supported_isas"]:
            _native.set_isa(name)
            for lay in LAYOUTS:
                np.testing.assert_array_equal(matmul(lay, packed_of(lay, t), q), expected,
                                              err_msg=f"{name} {lay}")
    finally:
        _native.set_isa(previous)


@pytest.mark.parametrize("lay", ["tl", "t5"])
def test_other_layouts_equal_i2(isa, rng, lay):
    t = rand_trits(rng, 50, 999)
    x = rng.standard_normal((6, 999)).astype(np.float32)
    np.testing.assert_array_equal(linear(lay, packed_of(lay, t), x, 0.5),
                                  linear("i2", packed_of("i2", t), x, 0.5))


@pytest.mark.parametrize("lay", LAYOUTS)
def test_threads_give_identical_results(rng, lay):
    t = rand_trits(rng, 301, 1111)
    x = rng.standard_normal((37, 1111)).astype(np.float32)
    q = rng.integers(-128, 128, (37, 1111), dtype=np.int8)
    p = packed_of(lay, t)
    prev = _native.get_num_threads()
    try:
        _native.set_num_threads(1)
        a, af = matmul(lay, p, q), linear(lay, p, x, 0.25)
        _native.set_num_threads(2)
        b, bf = matmul(lay, p, q), linear(lay, p, x, 0.25)
    finally:
        _native.set_num_threads(prev)
    np.testing.assert_array_equal(a, b)
    assert af.tobytes() == bf.tobytes()


# ---- wrong inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("lay", LAYOUTS)
def test_pack_unpack_bad_arguments(lay):
    pack, unpack = getattr(_native, f"pack_{lay}"), getattr(_native, f"unpack_{lay}")
    rb = getattr(_native, f"{lay}_row_bytes")(10)
    t = np.zeros((2, 10), np.int8)
    out = np.empty((2, rb), np.uint8)
    with pytest.raises(TypeError, match="trits must have dtype int8"):
        pack(out, t.astype(np.int16))
    with pytest.raises(TypeError, match="out must have dtype uint8"):
        pack(out.astype(np.int8), t)
    with pytest.raises(ValueError, match=r"out.shape\[1\]"):
        pack(np.empty((2, rb + 1), np.uint8), t)
    with pytest.raises(ValueError, match=r"out.shape\[0\]"):
        pack(np.empty((3, rb), np.uint8), t)
    with pytest.raises(ValueError, match="must be -1, 0 or \\+1"):
        pack(out, np.full((2, 10), 2, np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        pack(out, np.zeros((10, 2), np.int8).T)
    ro = np.empty((2, rb), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        pack(ro, t)
    with pytest.raises(ValueError, match="share memory"):
        big = np.zeros(256, np.uint8)
        pack(big[:2 * rb].reshape(2, rb), big[:20].view(np.int8).reshape(2, 10))
    with pytest.raises(ValueError, match=r"packed.shape\[1\]"):
        unpack(np.empty((2, 10), np.int8), np.zeros((2, rb + 1), np.uint8))
    with pytest.raises(TypeError, match="trits_out must have dtype int8"):
        unpack(np.empty((2, 10), np.float32), np.zeros((2, rb), np.uint8))


@pytest.mark.parametrize("lay", LAYOUTS)
def test_matmul_and_linear_bad_arguments(lay):
    mm, lin = getattr(_native, f"ternary_matmul_{lay}"), getattr(_native, f"ternary_linear_{lay}")
    rb = getattr(_native, f"{lay}_row_bytes")(300)
    p = np.zeros((4, rb), np.uint8)
    q = np.zeros((2, 300), np.int8)
    x = np.zeros((2, 300), np.float32)
    oi = np.empty((2, 4), np.int32)
    of = np.empty((2, 4), np.float32)
    with pytest.raises(TypeError, match="out must have dtype int32"):
        mm(of, p, q)
    with pytest.raises(TypeError, match="q must have dtype int8"):
        mm(oi, p, x)
    with pytest.raises(TypeError, match="packed must have dtype uint8"):
        mm(oi, p.view(np.int8), q)
    with pytest.raises(ValueError, match=r"packed.shape\[1\]"):
        mm(oi, p, np.zeros((2, 301 if lay == "tl" else 1000), np.int8))
    with pytest.raises(ValueError, match=r"out.shape\[1\]"):
        mm(np.empty((2, 5), np.int32), p, q)
    with pytest.raises(ValueError, match=r"out.shape\[0\]"):
        mm(np.empty((3, 4), np.int32), p, q)
    with pytest.raises(ValueError, match="2 dimensions"):
        mm(oi, p, q.ravel())
    with pytest.raises(ValueError, match="C-contiguous"):
        mm(oi, p, np.zeros((300, 2), np.int8).T)
    ro = np.empty((2, 4), np.int32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        mm(ro, p, q)
    buf = np.zeros(4096, np.uint8)
    with pytest.raises(ValueError, match="share memory"):
        mm(buf[:32].view(np.int32).reshape(2, 4), buf[:4 * rb].reshape(4, rb), q)
    with pytest.raises(ValueError, match="share memory"):
        lin(x.reshape(-1)[:8].reshape(2, 4), p, x, 1.0)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        lin(of, p, q, 1.0)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        lin(oi, p, x, 1.0)
    with pytest.raises(ValueError, match="w_mult must be a finite"):
        lin(of, p, x, float("inf"))
    with pytest.raises(TypeError):
        lin(of, p, x)
    with pytest.raises(TypeError, match="numpy array"):
        mm(oi, p, [[0] * 300] * 2)


# ---- converters and TernaryWeight ------------------------------------------------------------

def test_bitnet_packed_round_trip(rng):
    t = rand_trits(rng, 64, 96)
    packed = ref.pack_bitnet(t)
    np.testing.assert_array_equal(T.bitnet_packed_from_trits(t), packed)
    np.testing.assert_array_equal(T.trits_from_bitnet_packed(packed), t)
    np.testing.assert_array_equal(ref.unpack_bitnet_packed(packed), t)
    # a random byte array in the 2B-4T layout: only fields 0..2 are valid
    codes = rng.integers(0, 3, (4, 16, 40))
    p = (codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6).astype(np.uint8)
    np.testing.assert_array_equal(T.trits_from_bitnet_packed(p), ref.unpack_bitnet_packed(p))
    with pytest.raises(ValueError, match="equal to 3"):
        T.trits_from_bitnet_packed(np.full((1, 2), 0xFF, np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        T.trits_from_bitnet_packed(np.zeros((1, 2), np.int8))


def test_absmean_matches_formula(rng):
    w = (rng.standard_normal((40, 70)) * 0.02).astype(np.float32)
    w[0, :4] = [0.5, -0.5, 0.0, 1e-9]
    t, w_mult = T.absmean_quantize(w)
    rt, rs = ref.absmean_ternary(w)
    np.testing.assert_array_equal(t, rt)
    assert w_mult == float(np.float32(1) / rs)
    # all-zero weights: the 1e-5 clamp
    t0, m0 = T.absmean_quantize(np.zeros((3, 3), np.float32))
    assert not t0.any() and m0 == float(np.float32(1) / (np.float32(1) / np.float32(1e-5)))
    # round half to even at exactly +-0.5 * (1/s)
    w2 = np.array([[1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.0, 0.0]], np.float32)  # mean |w| = 0.75
    t2, _ = T.absmean_quantize(w2)
    np.testing.assert_array_equal(t2, ref.absmean_ternary(w2)[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ternary_weight_linear(isa, rng, layout):
    w = (rng.standard_normal((48, 200)) * 0.03).astype(np.float32)
    tw = T.TernaryWeight.from_float(w, layout=layout)
    t, w_mult = T.absmean_quantize(w)
    assert tw.shape == (48, 200) and tw.layout == layout
    assert tw.nbytes == tw.packed.nbytes
    np.testing.assert_array_equal(tw.trits(), t)
    x = rng.standard_normal((5, 200)).astype(np.float32)
    expected = ref.ternary_linear(t, x, w_mult)
    np.testing.assert_array_equal(tw.linear(x), expected)
    np.testing.assert_array_equal(tw.linear(x[2]), expected[2])
    out = np.empty((5, 48), np.float32)
    assert tw.linear(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="x must have shape"):
        tw.linear(x[:, :10])
    with pytest.raises(TypeError, match="float32"):
        tw.linear(x.astype(np.float64))
    with pytest.raises(ValueError, match="out must be"):
        tw.linear(x, out=np.empty((5, 47), np.float32))


def test_ternary_weight_from_bitnet_and_auto_layout(rng):
    t = rand_trits(rng, 32, 130)
    tw = T.TernaryWeight.from_bitnet_packed(ref.pack_bitnet(t), w_mult=0.5)
    assert tw.layout in LAYOUTS
    np.testing.assert_array_equal(tw.trits(), t)
    x = rng.standard_normal(130).astype(np.float32)
    np.testing.assert_array_equal(tw.linear(x), ref.ternary_linear(t, x[None], 0.5)[0])
    with pytest.raises(ValueError, match="-1, 0 and \\+1"):
        T.TernaryWeight.from_trits(np.full((2, 2), 3, np.int8))
    with pytest.raises(ValueError, match="layout"):
        T.TernaryWeight.from_trits(t, 1.0, layout="q4")
    with pytest.raises(ValueError, match="finite"):
        T.TernaryWeight.from_trits(t, float("nan"))


def test_packed_weights_come_from_the_arena(rng):
    a, b = T.packed_empty(2560, 640), T.packed_empty(2560, 640)
    assert a.shape == (2560, 640) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert a.ctypes.data % 4096 == 0 and b.ctypes.data % 4096 == 0
    assert not np.shares_memory(a, b)
    small = T.packed_empty(3, 64)  # small weights get their own array
    assert small.shape == (3, 64) and small.base is None
    big = T.packed_empty(60000, 640)  # larger than half a chunk: its own 2 MiB-aligned block
    assert big.ctypes.data % (2 << 20) == 0
    t = rand_trits(rng, 1024, 640)
    tw = T.TernaryWeight.from_trits(t, 1.0, layout="i2")
    np.testing.assert_array_equal(tw.trits(), t)


def test_arena_chunks_are_freed_with_their_weights():
    import gc
    import weakref
    T.new_arena_chunk()
    a = T.packed_empty(1024, 640)
    base = weakref.ref(a.base)
    b = T.packed_empty(1024, 640)
    assert b.base is a.base  # same chunk
    del a, b
    gc.collect()
    assert base() is None  # the arena did not keep the chunk alive
    c = T.packed_empty(1024, 640)
    T.new_arena_chunk()
    d = T.packed_empty(1024, 640)
    assert c.base is not d.base


def test_ternary_weight_repack_and_explicit_t5(rng):
    t = rand_trits(rng, 40, 700)
    x = rng.standard_normal((3, 700)).astype(np.float32)
    tw = T.TernaryWeight.from_trits(t, 0.25)
    assert tw.layout in T.MEASURED_LAYOUTS            # t5 is never picked by the measurement
    expected = ref.ternary_linear(t, x, 0.25)
    for lay in ("t5", "tl", "i2", "t5"):
        tw.repack(lay)
        assert tw.layout == lay and list(tw._packed) == [lay]
        assert tw.packed.shape == (40, getattr(_native, f"{lay}_row_bytes")(700))
        np.testing.assert_array_equal(tw.trits(), t)
        np.testing.assert_array_equal(tw.linear(x), expected)
    assert tw.nbytes == 40 * 192                       # 700 -> 960 padded, 5 trits a byte
    with pytest.raises(ValueError, match="layout"):
        tw.repack("i4")
    assert T.TernaryWeight.from_trits(t, 1.0, layout="t5").layout == "t5"


@pytest.mark.parametrize("wval", [-1, 1, None])
def test_t5_long_rows_fold_exactly(isa, rng, wval):
    # > 512 T5 blocks a row: the AVX-512 GEMV folds its two partial sums every 512 blocks
    K = 512 * 320 + 321
    t = rand_trits(rng, 5, K) if wval is None else np.full((5, K), wval, np.int8)
    q = np.full((2, K), 127, np.int8)
    q[1] = -128
    if wval is None:
        q = rng.integers(-128, 128, (2, K), dtype=np.int8)
    p = packed_of("t5", t)
    expected = ref.ternary_matmul(t, q)
    for m in range(2):   # M = 1: the decode kernel
        np.testing.assert_array_equal(matmul("t5", p, q[m:m + 1]), expected[m:m + 1])
    np.testing.assert_array_equal(matmul("t5", p, q), expected)
