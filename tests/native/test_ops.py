"""Float ops (rmsnorm, rope, softmax, silu, relu2, mul, add, and the encoder's layernorm, gelu): every ISA variant against
the float64 numpy references in reference.py.

Tolerances (float32 has a unit roundoff u = 6e-8):
  RMS_RTOL 2e-5   the sum of D squares in float32 carries a relative error of about
                  sqrt(D)*u for the SIMD partial sums and up to D*u (2.4e-4 at D=4097, in
                  practice ~1e-6) for the sequential scalar loop; x*r*w adds 2 roundings.
  ROPE_ATOL 4e-6  per element: |x1*cos - x2*sin| has ~3 roundings of values <= |x|max
                  (here |x| <= 4), cos/sin rounded to float32 (0.5 ulp); the float32 angle
                  is reproduced by the reference, so no position-dependent error is left.
  SM_RTOL 2e-5    exp is 1-2 ulp; the normalising sum of N terms adds ~sqrt(N)*u .. N*u.
  SILU_RTOL 2e-6  exp (2 ulp), one add, one divide.
  LN_ATOL 1e-5    outputs O(|w| + |b|) ~ 4 here; the mean and the centred sum of squares of D
                  float32 terms carry ~sqrt(D)*u relative error; a few more roundings.
  GELU_ATOL       2e-7 * (1 + |x|): the AVX2 erf (Abramowitz & Stegun 7.1.26) is within 1.5e-7,
                  times x/2, plus one float32 rounding of the product.
  relu2/mul/add   one float32 rounding each: compared bit for bit with float32 numpy.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ryzjupyter import _native

from . import reference as ref

RMS_RTOL = 2e-5
ROPE_ATOL = 4e-6
SM_RTOL = 2e-5
SILU_RTOL = 2e-6

SIZES = [1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 127, 255, 2560, 4097]


def close(got, want, rtol, atol=0.0):
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol)


# ---- rmsnorm ------------------------------------------------------------------------
@pytest.mark.parametrize("D", SIZES)
def test_rmsnorm(isa, rng, D):
    x = (rng.standard_normal((5, D)) * rng.uniform(0.01, 50, (5, 1))).astype(np.float32)
    w = rng.uniform(-2, 2, D).astype(np.float32)
    out = np.empty_like(x)
    _native.rmsnorm(out, x, w, 1e-5)
    close(out, ref.rmsnorm(x, w, 1e-5), RMS_RTOL, 1e-6)


def test_rmsnorm_in_place_zero_rows_and_eps(isa, rng):
    x = rng.standard_normal((4, 100)).astype(np.float32)
    x[2] = 0.0  # all-zero row: 0 * rsqrt(eps) = 0
    w = rng.standard_normal(100).astype(np.float32)
    want = ref.rmsnorm(x, w, 1e-6)
    _native.rmsnorm(x, x, w, 1e-6)
    close(x, want, RMS_RTOL, 1e-6)
    assert not x[2].any()
    e = np.empty((0, 100), np.float32)
    _native.rmsnorm(e, e.copy(), w, 1e-5)
    _native.rmsnorm(np.empty((3, 0), np.float32), np.empty((3, 0), np.float32),
                    np.empty(0, np.float32), 1e-5)


# ---- rope ----------------------------------------------------------------------------
@pytest.mark.parametrize("hd", [2, 6, 16, 30, 34, 64, 128])
def test_rope(isa, rng, hd):
    M, H = 7, 3
    x = rng.uniform(-4, 4, (M, H, hd)).astype(np.float32)
    pos = np.array([0, 1, 2, 17, 511, 4000, 131071], np.int64)
    for theta in (10000.0, 500000.0):
        y = x.copy()
        _native.rope(y, pos, theta)
        close(y, ref.rope(x, pos, theta), 0, ROPE_ATOL)


@pytest.mark.parametrize("hd", [2, 6, 16, 34, 128])
def test_rope_table_then_apply_equals_rope(isa, rng, hd):
    """The engine builds the table once per prefill chunk and applies it to every layer's q and
    k: bitwise what rope does row by row."""
    M, H = 9, 3
    x = rng.uniform(-4, 4, (M, H, hd)).astype(np.float32)
    pos = np.array([0, 1, 2, 17, 63, 511, 4000, 70000, 131071], np.int64)
    for theta in (10000.0, 500000.0):
        want = x.copy()
        _native.rope(want, pos, theta)
        cs = np.full((M, hd), np.nan, np.float32)
        _native.rope_table(cs, pos, theta)
        half = hd // 2
        f = pos[:, None].astype(np.float32) * ref.rope_inv_freq(hd, theta)[None, :]
        close(cs[:, :half], np.cos(f.astype(np.float64)), 0, 1e-6)
        close(cs[:, half:], np.sin(f.astype(np.float64)), 0, 1e-6)
        y = x.copy()
        _native.rope_apply(y, cs)
        np.testing.assert_array_equal(y, want)


def test_rope_table_and_apply_refuse_bad_values():
    with pytest.raises(ValueError, match="theta"):
        _native.rope_table(np.zeros((2, 8), np.float32), np.zeros(2, np.int64), 0.0)
    with pytest.raises(ValueError, match="even"):
        _native.rope_table(np.zeros((2, 7), np.float32), np.zeros(2, np.int64), 1e4)
    with pytest.raises(ValueError, match="positions"):
        _native.rope_table(np.zeros((2, 8), np.float32), np.array([0, -3], np.int64), 1e4)
    with pytest.raises(ValueError, match="even"):
        _native.rope_apply(np.zeros((2, 1, 7), np.float32), np.zeros((2, 7), np.float32))


def test_rope_position_zero_is_identity_and_empty(isa, rng):
    x = rng.standard_normal((3, 2, 10)).astype(np.float32)
    y = x.copy()
    _native.rope(y, np.zeros(3, np.int64), 10000.0)
    np.testing.assert_array_equal(y, x)
    _native.rope(np.empty((0, 2, 10), np.float32), np.empty(0, np.int64), 10000.0)
    _native.rope(np.empty((2, 0, 10), np.float32), np.zeros(2, np.int64), 10000.0)


def test_rope_inv_freq_matches_torch_formula():
    # float32 values printed by torch 2.13.0+cpu for
    # 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd)); the reference
    # (and the kernel, which computes inv_freq the same way) agree within 1 ulp.
    inv = ref.rope_inv_freq(128, 500000.0)
    assert inv.dtype == np.float32 and inv[0] == 1.0
    np.testing.assert_allclose(inv[[1, 31, 63]], [0.8146172165870667, 0.0017360467463731766,
                                                  2.4551407022954663e-06], rtol=1.2e-7)
    inv = ref.rope_inv_freq(64, 10000.0)
    np.testing.assert_allclose(inv[[1, 15, 31]], [0.7498942017555237, 0.01333521492779255,
                                                  0.0001333521504420787], rtol=1.2e-7)


# ---- softmax -------------------------------------------------------------------------
@pytest.mark.parametrize("N", SIZES)
def test_softmax(isa, rng, N):
    x = (rng.standard_normal((6, N)) * rng.uniform(0.1, 30, (6, 1))).astype(np.float32)
    x[1, 1::3] = -np.inf  # masked entries (never the whole row)
    want = ref.softmax(x)
    _native.softmax(x)
    close(x, want, SM_RTOL, 1e-12)
    np.testing.assert_allclose(x.sum(1), 1.0, rtol=SM_RTOL)


def test_softmax_special_rows(isa):
    x = np.array([[-np.inf] * 19,
                  [0.0] * 18 + [-np.inf],
                  [1e30, -1e30] + [-np.inf] * 17,
                  [0.0] * 18 + [np.nan],
                  [-90.0] * 9 + [0.0] + [-200.0] * 9], np.float32)
    _native.softmax(x)
    assert not x[0].any()  # all -inf: documented as zeros
    np.testing.assert_allclose(x[1, :18], 1 / 18, rtol=SM_RTOL)
    assert x[1, 18] == 0.0
    assert x[2, 0] == 1.0 and not x[2, 1:].any()
    assert np.isnan(x[3]).all()
    assert x[4, 9] == 1.0 and (x[4, :9] < 1e-38).all()
    _native.softmax(np.empty((0, 5), np.float32))
    _native.softmax(np.empty((3, 0), np.float32))


# ---- element-wise ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 17, 100, 40000])
def test_silu(isa, rng, n):
    x = (rng.standard_normal(n) * 10).astype(np.float32)
    if n > 8:
        x[:6] = [0.0, -0.0, 88.0, -88.0, 100.0, -100.0]
    out = np.empty_like(x)
    _native.silu(out, x)
    close(out, ref.silu(x), SILU_RTOL, 1e-37)


@pytest.mark.parametrize("n", [0, 1, 7, 17, 40000])
def test_relu2_mul_add_exact(isa, rng, n):
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(a)
    _native.relu2(out, a)
    r = np.maximum(a, np.float32(0))
    np.testing.assert_array_equal(out, r * r)
    _native.mul(out, a, b)
    np.testing.assert_array_equal(out, a * b)
    _native.add(out, a, b)
    np.testing.assert_array_equal(out, a + b)


def test_elementwise_any_rank_and_in_place(isa, rng):
    a = rng.standard_normal((3, 5, 7)).astype(np.float32)
    b = rng.standard_normal((3, 5, 7)).astype(np.float32)
    want = a + b
    _native.add(a, a, b)  # residual add in place
    np.testing.assert_array_equal(a, want)
    want = a * b
    _native.mul(b, a, b)  # out is b
    np.testing.assert_array_equal(b, want)
    want = ref.silu(a)
    _native.silu(a, a)
    close(a, want, SILU_RTOL, 1e-37)
    x = np.array([-1.0, np.nan, 2.0], np.float32)
    _native.relu2(x, x)
    assert x[0] == 0 and np.isnan(x[1]) and x[2] == 4.0


# ---- threads and hypothesis -------------------------------------------------------------
def test_threads_give_identical_results(rng, threads):
    x = rng.standard_normal((300, 333)).astype(np.float32)
    w = rng.standard_normal(333).astype(np.float32)
    base = {}
    prev = _native.get_num_threads()
    for n in (1, 2):
        _native.set_num_threads(n)
        out = np.empty_like(x)
        _native.rmsnorm(out, x, w, 1e-5)
        s = x.copy()
        _native.softmax(s)
        e = np.empty((x.size * 2,), np.float32)
        _native.silu(e, np.concatenate([x.ravel(), x.ravel()]))
        base[n] = (out, s, e)
    _native.set_num_threads(prev)
    for a, b in zip(base[1], base[2]):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=70),
                  elements=st.floats(-1e3, 1e3, width=32)))
def test_hypothesis_softmax_rmsnorm_all_isas(x):
    want_sm = ref.softmax(x)
    w = np.linspace(-1, 1, x.shape[1], dtype=np.float32)
    want_rms = ref.rmsnorm(x, w, 1e-5)
    previous = _native.info()["isa"]          # restored after each level (RYZ_ISA runs)
    for name in _native.info()["supported_isas"]:
        _native.set_isa(name)
        try:
            s = x.copy()
            _native.softmax(s)
            r = np.empty_like(x)
            _native.rmsnorm(r, x, w, 1e-5)
        finally:
            _native.set_isa(previous)
        close(s, want_sm, SM_RTOL, 1e-12)
        close(r, want_rms, RMS_RTOL, 1e-5)


# ---- the encoder's layernorm and gelu -------------------------------------------------
@pytest.mark.parametrize("D", [1, 7, 8, 15, 16, 17, 33, 384, 1536])
def test_layernorm(isa, rng, D):
    x = (rng.standard_normal((6, D)) * rng.uniform(0.01, 30, (6, 1)) + rng.uniform(-5, 5, (6, 1))).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    out = np.full_like(x, np.nan)
    _native.layernorm(out, x, w, b, 1e-12)
    np.testing.assert_allclose(out, ref.layernorm(x, w, b, 1e-12), atol=1e-5 * (1 + np.abs(w).max() * 4))
    _native.layernorm(x, x, w, b, 1e-5)            # in place
    assert np.isfinite(x).all()


def test_layernorm_constant_row_gives_bias(isa):
    x = np.full((2, 20), 3.5, np.float32)
    w = np.ones(20, np.float32)
    b = np.arange(20, dtype=np.float32)
    out = np.empty_like(x)
    _native.layernorm(out, x, w, b, 1e-12)
    np.testing.assert_array_equal(out, np.broadcast_to(b, x.shape))


def test_same_shape_errors_name_the_reference_dimension():
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"^b.shape\[1\] is 7 but must equal a.shape\[1\] \(8\)$"):
        _native.mul(np.empty_like(x), x, np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"^out.shape\[0\] is 3 but must equal x.shape\[0\] \(2\)$"):
        _native.silu(np.zeros((3, 8), np.float32), x)
    with pytest.raises(ValueError, match=r"^x.shape\[2\] \(head_dim\) must be even for rotate_half, got 7$"):
        _native.rope_apply(np.zeros((2, 2, 7), np.float32), np.zeros((2, 7), np.float32))


def test_layernorm_argument_errors():
    x = np.zeros((2, 8), np.float32)
    w = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="eps must be > 0"):
        _native.layernorm(np.empty_like(x), x, w, w, 0.0)
    with pytest.raises(ValueError, match="b"):
        _native.layernorm(np.empty_like(x), x, w, np.ones(7, np.float32), 1e-5)
    with pytest.raises(TypeError):
        _native.layernorm(np.empty_like(x), x.astype(np.float64), w, w, 1e-5)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 17, 1000, 40001])
def test_gelu(isa, rng, n):
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    if n > 8:
        x[:8] = [0.0, -0.0, 10.0, -10.0, 30.0, -30.0, 1e-20, -1e-20]
    out = np.full_like(x, np.nan)
    _native.gelu(out, x)
    want = ref.gelu(x)
    assert (np.abs(out - want) <= 2e-7 * (1 + np.abs(x)) + 1e-37).all(), np.abs(out - want).max()
    _native.gelu(x, x)                              # in place
    np.testing.assert_array_equal(x, out)


def test_registered_in_native_info(isa):
    kernels = _native.info()["kernels"]
    for k in ("rmsnorm", "rope", "softmax", "silu", "relu2", "mul", "add"):
        assert kernels[k] == isa
    # the encoder's layernorm and gelu: scalar, avx2, and the avx2 code at the avx512vnni level
    assert kernels["layernorm"] == kernels["gelu"] == ("avx2" if isa == "avx512vnni" else isa)
