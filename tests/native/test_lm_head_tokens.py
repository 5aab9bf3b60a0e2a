"""The int8 lm_head for a few tokens (``lm_head_i8_tokens``, the verify pass's head): every ISA
variant equals the numpy reference bit for bit, and each token's row equals ``lm_head_i8`` (the
decode head) for that token alone, so a verify pass and a decode step give the same logits."""
import numpy as np
import pytest

from ryzjupyter import _native

from . import reference as ref


def _case(rng, M, N, K):
    xq = rng.integers(-128, 128, (M, K), dtype=np.int8)      # every int8 value, -128 included
    wq = rng.integers(-128, 128, (N, K), dtype=np.int8)
    xs = rng.uniform(0.5, 2.0, M).astype(np.float32)
    ws = rng.uniform(0.5, 2.0, N).astype(np.float32)
    return xq, xs, wq, ws


@pytest.mark.parametrize("M,N,K", [(1, 5, 16), (2, 37, 2560), (3, 17, 33), (4, 64, 256), (7, 65, 15),
                                   (8, 130, 100), (9, 33, 2561), (12, 70, 300), (16, 100, 64), (17, 9, 48),
                                   (33, 20, 129)])   # 16 tokens a pass: one group up to 16, then 9 + 8, 11 + 11 + 11
def test_tokens_head_equals_reference_and_decode_head(isa, threads, rng, M, N, K):
    xq, xs, wq, ws = _case(rng, M, N, K)
    out = np.full((M, N), np.nan, np.float32)
    _native.lm_head_i8_tokens(out, xq, xs, wq, ws)
    np.testing.assert_array_equal(out, ref.matmul_i8(xq, xs, wq, ws))
    for m in range(M):
        one = np.empty((1, N), np.float32)
        _native.lm_head_i8(one, xq[m:m + 1], xs[m:m + 1], wq, ws)
        np.testing.assert_array_equal(out[m:m + 1], one)


def test_tokens_head_extreme_values(isa):
    """All -128 against all -128 and 127 at the largest row: the int32 sums stay exact."""
    K = 4096
    xq = np.full((3, K), -128, np.int8)
    xq[1] = 127
    wq = np.full((2, K), -128, np.int8)
    wq[1] = 127
    xs = np.ones(3, np.float32)
    ws = np.ones(2, np.float32)
    out = np.empty((3, 2), np.float32)
    _native.lm_head_i8_tokens(out, xq, xs, wq, ws)
    np.testing.assert_array_equal(out, ref.matmul_i8(xq, xs, wq, ws))


def test_tokens_head_bad_arguments():
    xq = np.zeros((2, 8), np.int8)
    wq = np.zeros((4, 8), np.int8)
    xs, ws = np.ones(2, np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match="shape"):
        _native.lm_head_i8_tokens(np.empty((2, 5), np.float32), xq, xs, wq, ws)
    with pytest.raises(ValueError):
        _native.lm_head_i8_tokens(np.empty((2, 4), np.float32), np.zeros((2, 9), np.int8), xs, wq, ws)
    with pytest.raises(TypeError):
        _native.lm_head_i8_tokens(np.empty((2, 4), np.float64), xq, xs, wq, ws)
    out = np.empty((2, 4), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        _native.lm_head_i8_tokens(out, xq, out[0, :2], wq, ws)


def test_k_limit_names_the_argument_and_both_numbers():
    """The K limit (int32 sums) comes from pyarg.c's shared check, for both int8 head bindings."""
    K = 131072                                          # RYZ_MATMUL_I8_MAX_K + 1
    wq, ws = np.zeros((4, K), np.int8), np.ones(4, np.float32)
    for fn, M in ((_native.lm_head_i8, 1), (_native.lm_head_i8_tokens, 3)):
        with pytest.raises(ValueError, match=r"^wq\.shape\[1\] \(K=131072\) exceeds 131071$"):
            fn(np.zeros((M, 4), np.float32), np.zeros((M, K), np.int8), np.ones(M, np.float32), wq, ws)
