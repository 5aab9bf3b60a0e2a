"""int8 activation quantization: every ISA variant equals the numpy reference bit for bit."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ryzjupyter import _native

from .reference import quantize_rows_i8 as ref_quant

SIZES = [1, 3, 15, 16, 17, 63, 64, 65, 255, 256, 257, 2560, 4097]


def run(x):
    q = np.empty(x.shape, np.int8)
    s = np.empty(x.shape[0], np.float32)
    _native.quantize_rows_i8(q, s, x)
    return q, s


@pytest.mark.parametrize("K", SIZES)
def test_matches_reference(isa, rng, K):
    x = (rng.standard_normal((5, K)) * rng.uniform(0.01, 100, (5, 1))).astype(np.float32)
    q, s = run(x)
    rq, rs = ref_quant(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(s, rs)


def test_zero_rows_and_tiny_rows(isa):
    x = np.zeros((3, 33), np.float32)
    x[1, 5] = 1e-7  # below the 1e-5 floor: scale is 127/1e-5
    x[2] = -0.0
    q, s = run(x)
    rq, rs = ref_quant(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(s, rs)
    assert s[0] == np.float32(127.0) / np.float32(1e-5)


def test_empty_shapes(isa):
    q, s = run(np.zeros((0, 16), np.float32))
    assert q.shape == (0, 16) and s.shape == (0,)
    q, s = run(np.zeros((2, 0), np.float32))
    np.testing.assert_array_equal(s, ref_quant(np.zeros((2, 0), np.float32))[1])


def test_ties_round_half_to_even(isa):
    # absmax 127 gives scale exactly 1.0, so x*s are the half-way values themselves
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] + [0.0] * 9], np.float32)
    q, s = run(x)
    assert s[0] == 1.0
    assert q[0, :8].tolist() == [127, 0, 2, 2, 0, -2, -2, 4]


def test_saturation_and_absmax_ties(isa):
    x = np.array([[-127.0, 127.0, -127.0, 50.0] * 5], np.float32)
    q, _ = run(x)
    assert q.min() == -127 and q.max() == 127
    np.testing.assert_array_equal(q, ref_quant(x)[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("pos", [0, 17, 40])
def test_non_finite_rows_are_refused(isa, bad, pos):
    x = np.ones((3, 41), np.float32)
    x[2, pos] = bad
    with pytest.raises(ValueError, match="row 2 contains NaN or inf"):
        run(x)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=300),
                  elements=st.floats(-1e6, 1e6, width=32)))
def test_hypothesis_all_isas(x):
    expected = ref_quant(x)
    previous = _native.info()["isa"]          # restored after each level (RYZ_ISA runs)
    for name in _native.info()["supported_isas"]:
        _native.set_isa(name)
        try:
            q, s = run(x)
        finally:
            _native.set_isa(previous)
        np.testing.assert_array_equal(q, expected[0], err_msg=name)
        np.testing.assert_array_equal(s, expected[1], err_msg=name)


def test_threads_give_identical_results(rng):
    x = rng.standard_normal((300, 999)).astype(np.float32)
    prev = _native.get_num_threads()
    try:
        _native.set_num_threads(1)
        a = run(x)
        _native.set_num_threads(2)
        b = run(x)
    finally:
        _native.set_num_threads(prev)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_arguments_raise():
    x = np.ones((2, 8), np.float32)
    q = np.empty((2, 8), np.int8)
    s = np.empty(2, np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _native.quantize_rows_i8(q, s, x.astype(np.float64))
    with pytest.raises(TypeError, match="q must have dtype int8"):
        _native.quantize_rows_i8(q.astype(np.uint8), s, x)
    with pytest.raises(ValueError, match="q.shape\\[1\\] is 7"):
        _native.quantize_rows_i8(np.empty((2, 7), np.int8), s, x)
    with pytest.raises(ValueError, match="scales.shape\\[0\\]"):
        _native.quantize_rows_i8(q, np.empty(3, np.float32), x)
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        _native.quantize_rows_i8(q, s, x.ravel())
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.quantize_rows_i8(q, s, np.ones((8, 2), np.float32).T)
    ro = np.empty((2, 8), np.int8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _native.quantize_rows_i8(ro, s, x)
    with pytest.raises(TypeError, match="numpy array"):
        _native.quantize_rows_i8(q, s, [[1.0] * 8] * 2)
    with pytest.raises(TypeError):
        _native.quantize_rows_i8(q, s)
