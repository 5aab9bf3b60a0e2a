"""The 4-bit lm_head (head4 family, _native/head4.h): quantize_head4 and lm_head_i4 against
the numpy reference (bitwise: the format and the GEMV's float summation order are specified),
on every ISA level, odd shapes, 1 vs 2 threads, extremes, and bad inputs."""
import numpy as np
import pytest

from ryzjupyter import _native

from . import reference as ref

# (M tokens, V rows, K columns, group): V not a multiple of 16 (or 4), K not of the group
SHAPES = [(1, 1, 1, 32), (1, 5, 31, 32), (1, 16, 32, 32), (2, 17, 33, 32), (3, 37, 100, 64),
          (1, 63, 257, 128), (4, 130, 2560, 32), (1, 1000, 2560, 32), (5, 33, 640, 64), (1, 47, 2559, 32)]


def alloc(V, K, G):
    T, ng = -(-V // 16), -(-K // G)
    return np.empty((T, ng, 8 * G), np.uint8), np.empty((T, ng, 16), np.uint16)


def quant(w, G):
    p, s = alloc(*w.shape, G)
    _native.quantize_head4(p, s, w)
    return p, s


def gemv(xq, xs, p, s, V):
    out = np.full((xq.shape[0], V), np.nan, np.float32)
    _native.lm_head_i4(out, xq, xs, p, s)
    return out


def rand_x(rng, M, K):
    return rng.integers(-127, 128, (M, K), dtype=np.int8), rng.uniform(0.5, 200, M).astype(np.float32)


@pytest.mark.parametrize("M,V,K,G", SHAPES)
def test_matches_reference(isa, rng, M, V, K, G):
    w = (rng.standard_normal((V, K)) * rng.uniform(0.001, 3, (V, 1))).astype(np.float32)
    pr, sr, q, d = ref.quantize_head4(w, G)
    p, s = quant(w, G)
    np.testing.assert_array_equal(p, pr)
    np.testing.assert_array_equal(s, sr)
    xq, xs = rand_x(rng, M, K)
    np.testing.assert_array_equal(gemv(xq, xs, p, s, V), ref.lm_head_i4(xq, xs, q, d, V, G))


def test_tokens_independent_and_threads_identical(isa, rng):
    """M tokens in one call == one call per token; 1 and 2 threads bitwise identical."""
    V, K, G = 517, 300, 32
    p, s = quant(rng.standard_normal((V, K)).astype(np.float32), G)
    xq, xs = rand_x(rng, 6, K)
    prev = _native.get_num_threads()
    try:
        outs = []
        for th in (1, 2):
            _native.set_num_threads(th)
            outs.append(gemv(xq, xs, p, s, V))
        np.testing.assert_array_equal(outs[0], outs[1])
        for m in range(6):
            np.testing.assert_array_equal(gemv(xq[m:m + 1], xs[m:m + 1], p, s, V), outs[0][m:m + 1])
    finally:
        _native.set_num_threads(prev)


def test_quantization_rules(isa):
    """Round half to even, the +-7 range, a zero group (scale 0, q = 0), float16 subnormal
    scales, padding (q = 0, scale 0)."""
    G = 32
    w = np.zeros((3, 40), np.float32)
    w[0, :8] = np.array([7, -7, 3.5, 2.5, -0.5, 0.5, 1.5, -2.5], np.float32)   # d = 1 exactly
    w[1, :32] = 1e-6 * np.arange(32)                                           # d is f16-subnormal
    p, s = quant(w, G)
    pr, sr, q, d = ref.quantize_head4(w, G)
    np.testing.assert_array_equal(p, pr)
    np.testing.assert_array_equal(s, sr)
    assert list(q[0, :8]) == [7, -7, 4, 2, 0, 0, 2, -2]
    assert d[0, 0] == 1.0 and d[0, 1] == 0.0 and d[2, 0] == 0.0 and np.all(q[2] == 0)
    assert 0 < d[1, 0] < np.float32(6.1e-5) and np.all(np.abs(q) <= 7)
    assert np.all(s[0, :, 3:] == 0)                                           # padding rows 3..15
    assert np.all(p[0].reshape(2, G // 8, 16, 4)[:, :, 3:, :] == 0x88)        # u = 8 (q = 0)
    assert np.all(q[:, 40:] == 0) and np.all(s[0, 1, :] >= 0)


def test_extremes_exact(isa):
    """Largest sums: x = +-127, q = +-7 over K = 4096: isum = 127 * 7 * 32 per group is
    exact in int32 and in float32, so the logit is known."""
    V, K, G = 20, 4096, 32
    w = np.full((V, K), 7.0, np.float32)
    w[1::2] = -7.0
    p, s = quant(w, G)
    for a in (127, -127, -128):
        xq = np.full((1, K), a, np.int8)
        out = gemv(xq, np.ones(1, np.float32), p, s, V)
        assert out[0, 0] == np.float32(a * 7 * K) and out[0, 1] == np.float32(-a * 7 * K)


def test_non_finite_refused_and_scale_rules(isa):
    for bad in (np.nan, np.inf, -np.inf):
        w = np.ones((20, 40), np.float32)
        w[17, 3] = bad
        p, s = alloc(20, 40, 32)
        with pytest.raises(ValueError, match="row 17"):
            _native.quantize_head4(p, s, w)
    w = np.full((2, 32), 5e5, np.float32)                   # 5e5 / 7 overflows float16
    p, s = alloc(2, 32, 32)
    with pytest.raises(ValueError, match="float16"):
        _native.quantize_head4(p, s, w)
    # xs = 0 gives what IEEE gives (+-inf, or NaN for a zero sum), at every level
    p, s = quant(np.eye(16, 32, dtype=np.float32), 32)
    xq = np.zeros((1, 32), np.int8)
    xq[0, 0] = 1
    out = gemv(xq, np.zeros(1, np.float32), p, s, 16)
    assert out[0, 0] == np.inf and np.isnan(out[0, 1])


def test_checks_arguments():
    V, K, G = 20, 40, 32
    p, s = quant(np.ones((V, K), np.float32), G)
    xq, xs = np.zeros((1, K), np.int8), np.ones(1, np.float32)
    out = np.empty((1, V), np.float32)
    with pytest.raises(TypeError, match="xq"):
        _native.lm_head_i4(out, xq.astype(np.int16), xs, p, s)
    with pytest.raises(TypeError, match="packed"):
        _native.lm_head_i4(out, xq, xs, p.view(np.int8), s)
    with pytest.raises(TypeError, match="scales"):
        _native.lm_head_i4(out, xq, xs, p, s.astype(np.float32))
    with pytest.raises(ValueError, match="out"):
        _native.lm_head_i4(np.empty((1, 40), np.float32), xq, xs, p, s)       # V does not fit 2 tiles
    with pytest.raises(ValueError, match="xq"):
        _native.lm_head_i4(out, np.zeros((1, 80), np.int8), xs, p, s)         # K does not fit 2 groups
    with pytest.raises(ValueError, match="xs"):
        _native.lm_head_i4(out, xq, np.ones(2, np.float32), p, s)
    with pytest.raises(ValueError, match="out"):
        _native.lm_head_i4(np.empty((2, V), np.float32), xq, xs, p, s)
    with pytest.raises(ValueError, match="scales"):
        _native.lm_head_i4(out, xq, xs, p, s[:, :1])
    with pytest.raises(ValueError, match="packed"):
        _native.lm_head_i4(out, xq, xs, np.zeros((2, 2, 8 * 48), np.uint8), s)  # group 48
    with pytest.raises(ValueError, match="dimensions"):
        _native.lm_head_i4(out, xq, xs, p.reshape(2, -1), s)
    with pytest.raises((ValueError, TypeError)):
        _native.lm_head_i4(out[:, ::2], xq, xs, p, s)                          # not contiguous
    with pytest.raises(ValueError, match="share memory"):
        big = np.zeros(V * 4 + 64, np.uint8)
        _native.lm_head_i4(big[:V * 4].view(np.float32).reshape(1, V), big[:K].view(np.int8).reshape(1, K), xs, p, s)
    with pytest.raises(ValueError):
        _native.lm_head_i4(out, xq, xs, p, s.copy()[..., :8].copy())
    # quantize_head4
    w = np.ones((V, K), np.float32)
    with pytest.raises(ValueError, match="packed"):
        _native.quantize_head4(np.empty((3, 2, 256), np.uint8), np.empty((3, 2, 16), np.uint16), w)
    with pytest.raises(ValueError, match="packed"):
        _native.quantize_head4(np.empty((2, 1, 256), np.uint8), np.empty((2, 1, 16), np.uint16), w)
    with pytest.raises(TypeError, match="w"):
        _native.quantize_head4(p.copy(), s.copy(), w.astype(np.float64))
    with pytest.raises(ValueError, match="writable|read-only"):
        ro = p.copy()
        ro.flags.writeable = False
        _native.quantize_head4(ro, s.copy(), w)
    with pytest.raises(ValueError):
        _native.quantize_head4(p.copy(), s.copy(), np.ones((0, K), np.float32))


def test_registered():
    assert _native.info()["kernels"]["lm_head_i4"] == _native.info()["isa"]
