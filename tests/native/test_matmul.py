"""Dense int8 and float32 products: every ISA variant vs numpy (int8 bit-exact, float32
within the documented bound), threads, and bad inputs for both entry points."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryzjupyter import _native

from . import reference as ref

SHAPES = [(1, 1, 1), (1, 7, 300), (1, 3, 2560), (2, 5, 17), (3, 9, 64), (4, 4, 65),
          (5, 13, 1000), (7, 33, 100), (9, 6, 513), (17, 5, 127), (66, 19, 130), (0, 4, 8), (3, 0, 8)]


def i8(xq, xs, wq, ws):
    out = np.empty((xq.shape[0], wq.shape[0]), np.float32)
    _native.matmul_i8(out, xq, xs, wq, ws)
    return out


def f32(x, w):
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    _native.matmul_f32(out, x, w)
    return out


def rand_i8(rng, M, N, K):
    xq = rng.integers(-128, 128, (M, K), dtype=np.int8)
    wq = rng.integers(-128, 128, (N, K), dtype=np.int8)
    xs = rng.uniform(0.5, 200, M).astype(np.float32)
    ws = rng.uniform(0.5, 200, N).astype(np.float32)
    return xq, xs, wq, ws


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_i8_matches_reference(isa, rng, M, N, K):
    args = rand_i8(rng, M, N, K)
    np.testing.assert_array_equal(i8(*args), ref.matmul_i8(*args))


@pytest.mark.parametrize("N,K", [(16, 384), (17, 64), (31, 7), (48, 100), (100, 384), (37, 1000), (64, 65)])
def test_i8_one_query_matches_reference(isa, rng, N, K):
    """M = 1 (the bank's scan) has its own path at the AVX-512 level: 16 rows a step, their sums
    transposed into one vector; the tail rows go through the tiles."""
    args = rand_i8(rng, 1, N, K)
    np.testing.assert_array_equal(i8(*args), ref.matmul_i8(*args))
    xq, xs, wq, ws = args                       # rows inside a bigger matrix: a slice's offset
    np.testing.assert_array_equal(i8(xq, xs, wq[3:], ws[3:]), ref.matmul_i8(xq, xs, wq[3:], ws[3:]))


@pytest.mark.parametrize("a,b", [(-128, -128), (-128, 127), (127, 127), (127, -128)])
@pytest.mark.parametrize("M,N", [(3, 5), (1, 37)])
def test_i8_extremes(isa, a, b, M, N):
    K = 20000 + 33
    xq, wq = np.full((M, K), a, np.int8), np.full((N, K), b, np.int8)
    xs, ws = np.ones(M, np.float32), np.ones(N, np.float32)
    out = i8(xq, xs, wq, ws)
    np.testing.assert_array_equal(out, ref.matmul_i8(xq, xs, wq, ws))
    assert out[0, 0] == np.float32(a * b * K)


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_f32_within_bound(isa, rng, M, N, K):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    exact, bound = ref.matmul_f32_with_bound(x, w)
    assert np.all(np.abs(f32(x, w) - exact) <= bound)


@pytest.mark.parametrize("K", [5, 37, 64, 200, 4096 + 37])
def test_f32_gemv_rows_do_not_depend_on_their_neighbours(isa, rng, K):
    """One token: a row's result is the same computed with any neighbours (so any split of the rows
    between threads gives the same output; the BitNet head's decode and batched passes rely on
    it), within the error bound of the exact product, K tails included. (The recurrent decode's
    own one-token GEMV, gemv_f32, is tested through the decode step: test_recurrent_families.)"""
    x = rng.standard_normal((1, K)).astype(np.float32)
    w = rng.standard_normal((67, K)).astype(np.float32)
    full = f32(x, w)
    np.testing.assert_array_equal(full, np.hstack([f32(x, w[n:n + 1]) for n in range(67)]))
    np.testing.assert_array_equal(full[:, 5:40], f32(x, np.ascontiguousarray(w[5:40])))
    exact, bound = ref.matmul_f32_with_bound(x, w)
    assert np.all(np.abs(full - exact) <= bound)


def test_f32_exact_on_integers(isa, rng):
    # small integers: every partial sum is exact in float32, whatever the order
    x = rng.integers(-8, 9, (6, 301)).astype(np.float32)
    w = rng.integers(-8, 9, (10, 301)).astype(np.float32)
    np.testing.assert_array_equal(f32(x, w), (x.astype(np.int64) @ w.T.astype(np.int64)).astype(np.float32))


@settings(max_examples=30, deadline=None)
@given(M=st.integers(0, 9), N=st.integers(0, 30), K=st.integers(1, 600), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_all_isas(M, N, K, seed):
    rng = np.random.default_rng(seed)
    args = rand_i8(rng, M, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    expected = ref.matmul_i8(*args)
    exact, bound = ref.matmul_f32_with_bound(x, w)
    previous = _native.info()["isa"]
    try:
        for name in _native.info()["supported_isas"]:
            _native.set_isa(name)
            np.testing.assert_array_equal(i8(*args), expected, err_msg=name)
            assert np.all(np.abs(f32(x, w) - exact) <= bound), name
    finally:
        _native.set_isa(previous)


def test_threads_give_identical_results(rng):
    args = rand_i8(rng, 37, 301, 777)
    x = rng.standard_normal((37, 777)).astype(np.float32)
    w = rng.standard_normal((301, 777)).astype(np.float32)
    prev = _native.get_num_threads()
    try:
        _native.set_num_threads(1)
        a, af = i8(*args), f32(x, w)
        _native.set_num_threads(2)
        b, bf = i8(*args), f32(x, w)
    finally:
        _native.set_num_threads(prev)
    assert a.tobytes() == b.tobytes() and af.tobytes() == bf.tobytes()


# ---- gemm_f32: packed 16-row panels, bias, the encoder's linears --------------------------------
def pack_panels(w):
    N, K = w.shape
    P = (N + 15) // 16
    padded = np.zeros((P * 16, K), np.float32)
    padded[:N] = w
    return np.ascontiguousarray(padded.reshape(P, 16, K).transpose(0, 2, 1))


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 16, 8), (5, 17, 3), (6, 31, 257), (7, 33, 300),
                                   (97, 48, 40), (200, 384, 384), (13, 1536, 64), (3, 5, 0)])
def test_gemm_f32_within_bound(isa, rng, M, N, K):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    out = np.full((M, N), np.nan, np.float32)
    _native.gemm_f32(out, x, pack_panels(w), b)
    exact, bound = ref.matmul_f32_with_bound(x, w)
    assert (np.abs(out - (exact + b)) <= bound + 2.0**-23 * (np.abs(exact) + np.abs(b))).all()
    nob = np.full((M, N), np.nan, np.float32)
    _native.gemm_f32(nob, x, pack_panels(w), None)
    assert (np.abs(nob - exact) <= bound + 1e-30).all()


def test_gemm_f32_equals_in_order_fma_sum(isa, rng):
    """Each output is one chain of k terms in increasing order from the bias: small integers make
    every partial sum exact, so the result is bitwise the float64 one at every level."""
    x = rng.integers(-8, 9, (50, 600)).astype(np.float32)
    w = rng.integers(-8, 9, (40, 600)).astype(np.float32)
    b = rng.integers(-100, 100, 40).astype(np.float32)
    out = np.empty((50, 40), np.float32)
    _native.gemm_f32(out, x, pack_panels(w), b)
    np.testing.assert_array_equal(out, x.astype(np.float64) @ w.T.astype(np.float64) + b)


def test_gemm_f32_threads_identical(rng):
    x = rng.standard_normal((300, 384)).astype(np.float32)
    wp = pack_panels(rng.standard_normal((100, 384)).astype(np.float32))
    b = np.zeros(100, np.float32)
    prev = _native.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            _native.set_num_threads(t)
            o = np.empty((300, 100), np.float32)
            _native.gemm_f32(o, x, wp, b)
            outs.append(o)
    finally:
        _native.set_num_threads(prev)
    assert outs[0].tobytes() == outs[1].tobytes()


def test_gemm_f32_bad_arguments():
    x = np.zeros((4, 8), np.float32)
    wp = np.zeros((2, 8, 16), np.float32)
    out = np.zeros((4, 20), np.float32)
    _native.gemm_f32(out, x, wp, None)
    with pytest.raises(ValueError, match="ceil"):
        _native.gemm_f32(np.zeros((4, 40), np.float32), x, wp, None)
    with pytest.raises(ValueError, match="panel width"):
        _native.gemm_f32(out, x, np.zeros((2, 8, 8), np.float32), None)
    with pytest.raises(ValueError, match="x.shape\\[1\\]"):
        _native.gemm_f32(out, x, np.zeros((2, 9, 16), np.float32), None)
    with pytest.raises(ValueError, match="out.shape\\[1\\]"):
        _native.gemm_f32(out, x, wp, np.zeros(19, np.float32))
    with pytest.raises(TypeError):
        _native.gemm_f32(out, x.astype(np.float64), wp, None)
    with pytest.raises(ValueError):
        _native.gemm_f32(out, x, wp[:, :, ::2], None)


# ---- gemm_f16: the same panels in float16, widened exactly, summed as gemm_f32 sums ----------
def gemm(fn, x, wp, b):
    out = np.full((x.shape[0], wp.shape[0] * 16 if b is None else b.shape[0]), np.nan, np.float32)
    fn(out, x, wp, b)
    return out


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 16, 8), (5, 17, 3), (6, 31, 257), (7, 33, 300),
                                   (12, 384, 384), (12, 1536, 384), (12, 384, 1536), (97, 48, 40), (3, 5, 0)])
def test_gemm_f16_equals_gemm_f32_on_the_widened_weights(isa, rng, M, N, K):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) * rng.choice([1e-6, 0.05, 3.0, 2e3], (N, K))).astype(np.float32)
    wh = pack_panels(w).astype(np.float16)                # subnormal, small, large weights
    b = rng.standard_normal(N).astype(np.float32)
    got = gemm(_native.gemm_f16, x, wh, b)
    np.testing.assert_array_equal(got, gemm(_native.gemm_f32, x, wh.astype(np.float32), b))
    exact, bound = ref.matmul_f32_with_bound(x, w.astype(np.float16).astype(np.float32))
    assert (np.abs(got - (exact + b)) <= bound + 2.0**-23 * (np.abs(exact) + np.abs(b))).all()
    nob = np.full((M, N), np.nan, np.float32)
    _native.gemm_f16(nob, x, wh, None)
    np.testing.assert_array_equal(nob, gemm(_native.gemm_f32, x, wh.astype(np.float32), None)[:, :N])


def test_gemm_f16_same_on_every_thread_count_and_limit(rng):
    x = rng.standard_normal((300, 384)).astype(np.float32)
    wh = pack_panels(rng.standard_normal((100, 384)).astype(np.float32)).astype(np.float16)
    b = np.zeros(100, np.float32)
    prev = _native.get_num_threads()
    outs = []
    try:
        for t, limit in ((1, 0), (2, 0), (2, 1)):
            _native.set_num_threads(t)
            old = _native.set_thread_limit(limit)
            try:
                outs.append(gemm(_native.gemm_f16, x, wh, b))
            finally:
                _native.set_thread_limit(old)
    finally:
        _native.set_num_threads(prev)
    assert outs[0].tobytes() == outs[1].tobytes() == outs[2].tobytes()


def test_gemm_f16_bad_arguments():
    x = np.zeros((4, 8), np.float32)
    wh = np.zeros((2, 8, 16), np.float16)
    out = np.zeros((4, 20), np.float32)
    _native.gemm_f16(out, x, wh, None)
    with pytest.raises(TypeError, match="wh must have dtype float16"):
        _native.gemm_f16(out, x, wh.astype(np.float32), None)
    with pytest.raises(ValueError, match="ceil"):
        _native.gemm_f16(np.zeros((4, 40), np.float32), x, wh, None)
    with pytest.raises(ValueError, match="panel width"):
        _native.gemm_f16(out, x, np.zeros((2, 8, 8), np.float16), None)
    with pytest.raises(ValueError, match="x.shape\\[1\\]"):
        _native.gemm_f16(out, x, np.zeros((2, 9, 16), np.float16), None)
    with pytest.raises(ValueError, match="out.shape\\[1\\]"):
        _native.gemm_f16(out, x, wh, np.zeros(19, np.float32))
    with pytest.raises(ValueError):
        _native.gemm_f16(out, x, np.zeros((2, 8, 32), np.float16)[:, :, ::2], None)
    with pytest.raises(TypeError):
        _native.gemm_f16(out, x, wh)


def test_thread_limit_is_per_thread_and_returns_the_previous_one():
    import threading

    assert _native.set_thread_limit(1) == 0
    seen = []
    t = threading.Thread(target=lambda: seen.append(_native.set_thread_limit(0)))
    t.start()
    t.join()
    assert seen == [0]                                  # another thread has no limit
    assert _native.set_thread_limit(-3) == 1            # <= 0: no limit
    assert _native.set_thread_limit(0) == 0


def test_kernels_registered():
    kernels = _native.info()["kernels"]
    for name in ("matmul_i8", "matmul_f32", "ternary_gemm_i2", "ternary_gemm_tl", "gemm_f32", "gemm_f16"):
        assert name in kernels


def test_i8_bad_arguments():
    xq, xs = np.zeros((2, 8), np.int8), np.ones(2, np.float32)
    wq, ws = np.zeros((3, 8), np.int8), np.ones(3, np.float32)
    out = np.zeros((2, 3), np.float32)  # not empty: casting garbage floats to int32 warns
    with pytest.raises(TypeError, match="xq must have dtype int8"):
        _native.matmul_i8(out, xq.astype(np.uint8), xs, wq, ws)
    with pytest.raises(TypeError, match="ws must have dtype float32"):
        _native.matmul_i8(out, xq, xs, wq, ws.astype(np.float64))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        _native.matmul_i8(out.astype(np.int32), xq, xs, wq, ws)
    with pytest.raises(ValueError, match=r"wq.shape\[1\]"):
        _native.matmul_i8(out, xq, xs, np.zeros((3, 9), np.int8), ws)
    with pytest.raises(ValueError, match=r"xs.shape\[0\]"):
        _native.matmul_i8(out, xq, np.ones(3, np.float32), wq, ws)
    with pytest.raises(ValueError, match=r"ws.shape\[0\]"):
        _native.matmul_i8(out, xq, xs, wq, np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"out.shape\[1\]"):
        _native.matmul_i8(np.empty((2, 4), np.float32), xq, xs, wq, ws)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.matmul_i8(out, np.zeros((8, 2), np.int8).T, xs, wq, ws)
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _native.matmul_i8(ro, xq, xs, wq, ws)
    buf = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        _native.matmul_i8(buf[:6].reshape(2, 3), xq, buf[4:6], wq, ws)
    with pytest.raises(ValueError, match="exceeds"):
        big = np.zeros((1, 131072), np.int8)
        _native.matmul_i8(np.empty((1, 1), np.float32), big, xs[:1], big, ws[:1])


def test_f32_bad_arguments():
    x, w = np.zeros((2, 8), np.float32), np.zeros((3, 8), np.float32)
    out = np.zeros((2, 3), np.float32)  # not empty: casting garbage floats to int32 warns
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _native.matmul_f32(out, x.astype(np.float64), w)
    with pytest.raises(ValueError, match=r"w.shape\[1\]"):
        _native.matmul_f32(out, x, np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match=r"out.shape\[0\]"):
        _native.matmul_f32(np.empty((3, 3), np.float32), x, w)
    with pytest.raises(ValueError, match="2 dimensions"):
        _native.matmul_f32(out, x.ravel(), w)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.matmul_f32(out, x, np.zeros((8, 3), np.float32).T)
    with pytest.raises(ValueError, match="share memory"):
        _native.matmul_f32(x.reshape(-1)[:6].reshape(2, 3), x, w)
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _native.matmul_f32(ro, x, w)
