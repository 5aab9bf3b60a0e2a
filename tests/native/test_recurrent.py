"""Mamba conv1d / selective scan and RWKV-4 WKV: every ISA variant against float64 numpy
re-implementations of transformers' slow-path formulas (reference.py), step == sequence,
and state carried across calls.

Tolerances (float32, u = 6e-8), relative to the size of the outputs:
  CONV_RTOL 1e-5  K products summed (K <= 8) plus bias, then silu (exp 2 ulp): a few u.
  SCAN_RTOL 2e-5  the state is a decaying sum over T <= 40 tokens, each step 3-4 roundings
                  plus exp (2 ulp); y = h @ C sums N terms that may cancel, so the absolute
                  tolerance is SCAN_RTOL * max|y|.
  WKV_RTOL 2e-5   4 exps per step and a ratio of decaying sums over T <= 40 tokens.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryzjupyter import _native

from . import reference as ref

CONV_RTOL = 1e-5
SCAN_RTOL = 2e-5
WKV_RTOL = 2e-5


def close(got, want, rtol):
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=rtol * scale)


# ---- mamba conv1d -------------------------------------------------------------------
def conv_inputs(rng, T, D, K, fresh=False):
    x = rng.standard_normal((T, D)).astype(np.float32)
    state = np.zeros((D, K), np.float32) if fresh else rng.standard_normal((D, K)).astype(np.float32)
    w = (rng.standard_normal((D, K)) * 0.5).astype(np.float32)
    bias = rng.standard_normal(D).astype(np.float32)
    return x, state, w, bias


@pytest.mark.parametrize("T,D,K", [(1, 1, 1), (1, 17, 4), (3, 16, 4), (2, 33, 4), (9, 70, 4),
                                   (5, 8, 2), (4, 31, 7), (30, 130, 4), (0, 5, 4)])
def test_conv1d_matches_reference(isa, rng, T, D, K):
    x, state, w, bias = conv_inputs(rng, T, D, K)
    out = np.full((T, D), np.nan, np.float32)
    st_ = state.copy()
    _native.mamba_conv1d(out, st_, x, w, bias)
    want, want_state = ref.mamba_conv1d(x, state, w, bias)
    close(out, want, CONV_RTOL)
    np.testing.assert_array_equal(st_, want_state.astype(np.float32))  # copies only


def test_conv1d_no_bias_and_fresh_state_is_zero_padding(isa, rng):
    x, state, w, _ = conv_inputs(rng, 6, 20, 4, fresh=True)
    out = np.empty_like(x)
    _native.mamba_conv1d(out, state, x, w, None)
    # fresh state = torch Conv1d with padding K-1, truncated to T
    xp = np.concatenate([np.zeros((3, 20)), x.astype(np.float64)])
    want = np.stack([np.sum(w * xp[t:t + 4].T, axis=1) for t in range(6)])
    close(out, ref.silu(want), CONV_RTOL)


def test_conv1d_steps_equal_sequence(isa, rng):
    T, D, K = 7, 37, 4
    x, state, w, bias = conv_inputs(rng, T, D, K)
    seq_out = np.empty_like(x)
    seq_state = state.copy()
    _native.mamba_conv1d(seq_out, seq_state, x, w, bias)
    st_ = state.copy()
    for t in range(T):
        o = np.empty(D, np.float32)
        _native.mamba_conv1d_step(o, st_, x[t].copy(), w, bias)
        np.testing.assert_allclose(o, seq_out[t], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(st_, seq_state)


def test_conv1d_prefill_in_two_calls(isa, rng):
    x, state, w, bias = conv_inputs(rng, 10, 24, 4, fresh=True)
    a = np.empty_like(x)
    s1 = state.copy()
    _native.mamba_conv1d(a, s1, x, w, bias)
    b = np.empty_like(x)
    s2 = state.copy()
    for lo, hi in ((0, 2), (2, 3), (3, 10)):  # pieces shorter than K too
        part = np.empty((hi - lo, 24), np.float32)
        _native.mamba_conv1d(part, s2, np.ascontiguousarray(x[lo:hi]), w, bias)
        b[lo:hi] = part
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(s1, s2)


# ---- mamba selective scan ---------------------------------------------------------------
def scan_inputs(rng, T, D, N, fresh=False):
    u = rng.standard_normal((T, D)).astype(np.float32)
    dt = rng.uniform(-6, 1.5, (T, D)).astype(np.float32)
    if T and D:
        dt.flat[0] = 25.0  # softplus threshold: identity above 20
    A = -np.exp(np.log(np.tile(np.arange(1, N + 1, dtype=np.float32), (D, 1)))
                + rng.uniform(-0.3, 0.3, (D, N))).astype(np.float32)
    B = rng.standard_normal((T, N)).astype(np.float32)
    C = rng.standard_normal((T, N)).astype(np.float32)
    Dk = rng.standard_normal(D).astype(np.float32)
    z = rng.standard_normal((T, D)).astype(np.float32)
    h = np.zeros((D, N), np.float32) if fresh else (rng.standard_normal((D, N)) * 0.3).astype(np.float32)
    return h, u, dt, A, B, C, Dk, z


@pytest.mark.parametrize("T,D,N", [(1, 1, 1), (1, 40, 16), (5, 33, 16), (3, 17, 5), (8, 20, 24),
                                   (4, 9, 33), (40, 48, 16), (0, 8, 16)])
def test_scan_matches_reference(isa, rng, T, D, N):
    h, u, dt, A, B, C, Dk, z = scan_inputs(rng, T, D, N)
    y = np.full((T, D), np.nan, np.float32)
    h2 = h.copy()
    _native.mamba_scan(y, h2, u, dt, A, B, C, Dk, z)
    want_y, want_h = ref.mamba_scan(h, u, dt, A, B, C, Dk, z)
    close(y, want_y, SCAN_RTOL)
    close(h2, want_h, SCAN_RTOL)


def test_scan_without_gate(isa, rng):
    h, u, dt, A, B, C, Dk, _ = scan_inputs(rng, 6, 19, 16, fresh=True)
    y = np.empty_like(u)
    _native.mamba_scan(y, h, u, dt, A, B, C, Dk, None)
    close(y, ref.mamba_scan(np.zeros_like(h), u, dt, A, B, C, Dk, None)[0], SCAN_RTOL)


def test_scan_steps_equal_sequence(isa, rng):
    T, D, N = 9, 21, 16
    h, u, dt, A, B, C, Dk, z = scan_inputs(rng, T, D, N, fresh=True)
    y = np.empty_like(u)
    hs = h.copy()
    _native.mamba_scan(y, hs, u, dt, A, B, C, Dk, z)
    hstep = h.copy()
    for t in range(T):
        yt = np.empty(D, np.float32)
        _native.mamba_scan_step(yt, hstep, u[t].copy(), dt[t].copy(), A, B[t].copy(), C[t].copy(), Dk,
                                z[t].copy())
        np.testing.assert_allclose(yt, y[t], rtol=1e-6, atol=1e-6 * np.abs(y).max())
    np.testing.assert_allclose(hstep, hs, rtol=1e-6, atol=1e-7)


def test_scan_chunked_prefill_carries_state(isa, rng):
    h, u, dt, A, B, C, Dk, z = scan_inputs(rng, 12, 30, 16, fresh=True)
    y = np.empty_like(u)
    h1 = h.copy()
    _native.mamba_scan(y, h1, u, dt, A, B, C, Dk, z)
    h2 = h.copy()
    for lo, hi in ((0, 5), (5, 12)):
        c = lambda a: np.ascontiguousarray(a[lo:hi])
        part = np.empty((hi - lo, 30), np.float32)
        _native.mamba_scan(part, h2, c(u), c(dt), A, c(B), c(C), Dk, c(z))
        np.testing.assert_allclose(part, y[lo:hi], rtol=1e-6, atol=1e-6 * np.abs(y).max())
    np.testing.assert_allclose(h2, h1, rtol=1e-6, atol=1e-7)


# ---- RWKV-4 WKV ----------------------------------------------------------------------------
def wkv_inputs(rng, T, A):
    k = (rng.standard_normal((T, A)) * 3).astype(np.float32)
    v = rng.standard_normal((T, A)).astype(np.float32)
    decay = rng.uniform(-5, 2, A).astype(np.float32)
    first = rng.uniform(-1, 1, A).astype(np.float32)
    aa = np.zeros(A, np.float32)
    bb = np.zeros(A, np.float32)
    pp = np.full(A, -1e38, np.float32)
    return aa, bb, pp, k, v, decay, first


@pytest.mark.parametrize("T,A", [(1, 1), (1, 64), (3, 7), (5, 17), (12, 33), (40, 100), (0, 9)])
def test_wkv_matches_reference(isa, rng, T, A):
    aa, bb, pp, k, v, decay, first = wkv_inputs(rng, T, A)
    out = np.full((T, A), np.nan, np.float32)
    s = [aa.copy(), bb.copy(), pp.copy()]
    _native.rwkv4_wkv(out, *s, k, v, decay, first)
    want = ref.rwkv4_wkv(aa, bb, pp, k, v, decay, first)
    close(out, want[0], WKV_RTOL)
    for got, w in zip(s, want[1:]):
        np.testing.assert_allclose(got, w, rtol=WKV_RTOL, atol=1e-30)


def test_wkv_steps_equal_sequence_and_state_carries(isa, rng):
    T, A = 11, 45
    aa, bb, pp, k, v, decay, first = wkv_inputs(rng, T, A)
    out = np.empty_like(k)
    s = [aa.copy(), bb.copy(), pp.copy()]
    _native.rwkv4_wkv(out, *s, k, v, decay, first)
    st_ = [aa.copy(), bb.copy(), pp.copy()]
    for t in range(T):
        o = np.empty(A, np.float32)
        _native.rwkv4_wkv_step(o, *st_, k[t].copy(), v[t].copy(), decay, first)
        np.testing.assert_allclose(o, out[t], rtol=1e-6, atol=1e-7)
    for a, b in zip(s, st_):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # two halves of a prefill == one prefill
    s2 = [aa.copy(), bb.copy(), pp.copy()]
    o1, o2 = np.empty((4, A), np.float32), np.empty((T - 4, A), np.float32)
    _native.rwkv4_wkv(o1, *s2, k[:4].copy(), v[:4].copy(), decay, first)
    _native.rwkv4_wkv(o2, *s2, k[4:].copy(), v[4:].copy(), decay, first)
    np.testing.assert_allclose(np.concatenate([o1, o2]), out, rtol=1e-6, atol=1e-7)


def test_wkv_large_keys_stay_finite(isa, rng):
    aa, bb, pp, k, v, decay, first = wkv_inputs(rng, 6, 20)
    k *= 40  # exp(k) alone would overflow float32: the max trick keeps it finite
    out = np.empty_like(k)
    _native.rwkv4_wkv(out, aa, bb, pp, k, v, decay, first)
    assert np.isfinite(out).all() and np.isfinite(aa).all() and np.isfinite(bb).all()
    close(out, ref.rwkv4_wkv(np.zeros(20), np.zeros(20), np.full(20, -1e38), k, v, decay, first)[0],
          WKV_RTOL)


# ---- threads, registry, hypothesis ------------------------------------------------------
def test_threads_identical(rng, threads):
    h, u, dt, A, B, C, Dk, z = scan_inputs(rng, 20, 3000, 16)
    y = np.empty_like(u)
    _native.mamba_scan(y, h.copy(), u, dt, A, B, C, Dk, z)
    prev = _native.get_num_threads()
    _native.set_num_threads(1)
    try:
        y1 = np.empty_like(u)
        _native.mamba_scan(y1, h.copy(), u, dt, A, B, C, Dk, z)
    finally:
        _native.set_num_threads(prev)
    np.testing.assert_array_equal(y, y1)


def test_registered(isa):
    k = _native.info()["kernels"]
    assert k["mamba_conv1d"] == k["mamba_scan"] == k["rwkv4_wkv"] == isa


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 9), st.integers(1, 40), st.integers(1, 20), st.integers(1, 6), st.integers(0, 2 ** 31))
def test_hypothesis_all_isas(T, D, N, K, seed):
    rng = np.random.default_rng(seed)
    x, cstate, w, bias = conv_inputs(rng, T, D, K)
    h, u, dt, A, B, C, Dk, z = scan_inputs(rng, T, D, N)
    aa, bb, pp, k, v, decay, first = wkv_inputs(rng, T, D)
    want_c = ref.mamba_conv1d(x, cstate, w, bias)[0]
    want_s = ref.mamba_scan(h, u, dt, A, B, C, Dk, z)[0]
    want_w = ref.rwkv4_wkv(aa, bb, pp, k, v, decay, first)[0]
    previous = _native.info()["isa"]          # restored after each level (RYZ_ISA runs)
    for name in _native.info()["supported_isas"]:
        _native.set_isa(name)
        try:
            o = np.empty((T, D), np.float32)
            _native.mamba_conv1d(o, cstate.copy(), x, w, bias)
            close(o, want_c, CONV_RTOL)
            _native.mamba_scan(o, h.copy(), u, dt, A, B, C, Dk, z)
            close(o, want_s, SCAN_RTOL)
            _native.rwkv4_wkv(o, aa.copy(), bb.copy(), pp.copy(), k, v, decay, first)
            close(o, want_w, WKV_RTOL)
        finally:
            _native.set_isa(previous)


def test_scan_softplus_over_the_whole_range(isa):
    """With A = 0, B = C = u = 1, D = 0 and a fresh state, y = softplus(dt): checks the
    (vector) softplus against torch's rule, threshold 20 included, down to exp underflow."""
    x = np.concatenate([np.linspace(-100, 30, 2001), [19.99, 20.0, 20.01, -88, -103, 0, 1e-8]]).astype(np.float32)
    n = x.size
    y = np.empty(n, np.float32)
    h = np.zeros((n, 1), np.float32)
    one = np.ones(1, np.float32)
    _native.mamba_scan_step(y, h, np.ones(n, np.float32), x, np.zeros((n, 1), np.float32), one, one,
                            np.zeros(n, np.float32), None)
    want = ref.softplus(x)
    normal = want > 1e-37  # below that, float32 results are denormal: compare absolutely
    np.testing.assert_allclose(y[normal], want[normal], rtol=3e-7)
    np.testing.assert_allclose(y[~normal], want[~normal], rtol=0, atol=1e-38)
    assert (y[x > 20] == x[x > 20]).all()


# ---- rwkv-7 wkv ---------------------------------------------------------------------
def wkv7_reference(S, r, w, k, v, a, b):
    """float64: per head and token S = S diag(w) + (S a) b^T + v k^T, out = S r."""
    S = S.astype(np.float64).copy()
    T, C = r.shape
    H, N = S.shape[0], S.shape[1]
    out = np.zeros((T, C))
    for t in range(T):
        for h in range(H):
            sl = slice(h * N, (h + 1) * N)
            S[h] = S[h] * w[t, sl] + np.outer(S[h] @ a[t, sl], b[t, sl]) + np.outer(v[t, sl], k[t, sl])
            out[t, sl] = S[h] @ r[t, sl]
    return out, S


@pytest.mark.parametrize("T,H,N", [(1, 1, 8), (5, 3, 16), (7, 2, 13), (0, 2, 8), (12, 4, 64)])
def test_wkv7_matches_reference(isa, rng, T, H, N):
    C = H * N
    S = rng.standard_normal((H, N, N)).astype(np.float32) * 0.3
    r, k, v = (rng.standard_normal((T, C)).astype(np.float32) for _ in range(3))
    w = np.exp(-0.6 * rng.random((T, C))).astype(np.float32)
    kk = rng.standard_normal((T, C)).astype(np.float32)
    kk3 = kk.reshape(T, H, N)
    kk = (kk3 / np.linalg.norm(kk3, axis=-1, keepdims=True)).reshape(T, C).astype(np.float32)
    gate = rng.random((T, C)).astype(np.float32)
    a, b = -kk, (kk * gate).astype(np.float32)
    out = np.full((T, C), np.nan, np.float32)
    st = S.copy()
    _native.rwkv7_wkv(out, st, r, w, k, v, a, b)
    want, want_S = wkv7_reference(S, r, w, k, v, a, b)
    close(out, want, WKV_RTOL)
    close(st, want_S, WKV_RTOL)


def test_wkv7_steps_equal_sequence_and_shapes_are_checked(isa, rng):
    T, H, N = 6, 2, 16
    C = H * N
    S = rng.standard_normal((H, N, N)).astype(np.float32) * 0.3
    args = [rng.standard_normal((T, C)).astype(np.float32) * 0.5 for _ in range(6)]
    args[1] = np.exp(-np.abs(args[1])).astype(np.float32)
    out, st = np.empty((T, C), np.float32), S.copy()
    _native.rwkv7_wkv(out, st, *args)
    st2 = S.copy()
    for t in range(T):
        o = np.empty((1, C), np.float32)
        _native.rwkv7_wkv(o, st2, *[x[t:t + 1].copy() for x in args])
        np.testing.assert_array_equal(o[0], out[t])
    np.testing.assert_array_equal(st2, st)
    with pytest.raises(ValueError, match="H \\* N"):
        _native.rwkv7_wkv(out, st, args[0][:, :-1].copy(), *args[1:])
    with pytest.raises(ValueError):
        _native.rwkv7_wkv(out, np.zeros((H, N, N + 1), np.float32), *args)
