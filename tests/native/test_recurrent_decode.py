"""recurrent_plan / recurrent_decode (recurrent_decode.c): the fused decode step of the recurrent
families runs a program whose every operand is checked when the plan is made; the calls check
the token, the state arrays and the logits before anything runs. The numerics of real programs
are tested against the op-by-op path in tests/engine/test_recurrent_families.py."""
import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.families.recurrent import DecodeProgram


def tiny_program(V=5, D=4):
    """logits = W (embed[token] + state0): embed, add, gemv; state0 += the embedding."""
    p = DecodeProgram()
    emb = np.arange(V * D, dtype=np.float32).reshape(V, D) / 10
    W = np.eye(V, D, dtype=np.float32)
    h = p.scratch(D)
    p.op("embed", [h, p.w(emb)], [D, V])
    p.op("add", [h, h, p.state(0)], [D])
    p.op("copy", [p.state(0), h], [D])
    p.op("gemv", [p.LOGITS, h, p.w(W)], [V, D])
    return p, emb, W


def test_a_program_runs_and_carries_its_state():
    p, emb, W = tiny_program()
    plan = p.plan([4], 5, 5)
    st = [np.zeros(4, np.float32)]
    out = np.empty(5, np.float32)
    _native.recurrent_decode(plan, 2, st, out)
    np.testing.assert_allclose(out, W @ emb[2])
    _native.recurrent_decode(plan, 3, st, out)
    np.testing.assert_allclose(st[0], emb[2] + emb[3])
    np.testing.assert_allclose(out, W @ (emb[2] + emb[3]), rtol=1e-6)


def test_calls_are_checked_before_running():
    p, _, _ = tiny_program()
    plan = p.plan([4], 5, 5)
    out = np.empty(5, np.float32)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _native.recurrent_decode(plan, 5, [np.zeros(4, np.float32)], out)
    with pytest.raises(ValueError, match="needs 1 arrays"):
        _native.recurrent_decode(plan, 0, [], out)
    with pytest.raises(ValueError, match="states\\[0\\] must be a float32 array of 4"):
        _native.recurrent_decode(plan, 0, [np.zeros(3, np.float32)], out)
    with pytest.raises(ValueError, match="states\\[0\\]"):
        _native.recurrent_decode(plan, 0, [np.zeros(4, np.float64)], out)
    with pytest.raises(ValueError):
        _native.recurrent_decode(plan, 0, [np.zeros(4, np.float32)], np.empty(4, np.float32))
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises((ValueError, BufferError, TypeError)):
        _native.recurrent_decode(plan, 0, [ro], out)


def test_out_of_bounds_programs_are_refused():
    p, _, _ = tiny_program()
    with pytest.raises(ValueError, match="operand 2 needs 4 floats at 0, its array holds 3"):
        p.plan([3], 5, 5)                                  # the state is too short for the add
    p2 = DecodeProgram()
    h = p2.scratch(4)
    p2.op("gemv", [p2.LOGITS, h, p2.w(np.zeros((5, 3), np.float32))], [5, 4])
    with pytest.raises(ValueError, match="operand 2 needs 20 floats"):
        p2.plan([], 5, 5)
    p3 = DecodeProgram()
    p3.op("copy", [p3.scratch(2), (3, 7 << 32)], [2])
    with pytest.raises(ValueError, match="bad reference"):
        p3.plan([4], 1, 1)
    p4 = DecodeProgram()
    p4.op("gemv_i8", [p4.LOGITS, p4.scratch(4), p4.w(np.zeros((5, 4), np.float32)), p4.w(np.ones(5, np.float32))],
          [5, 4])
    with pytest.raises(TypeError, match="int8 weight"):
        p4.plan([], 5, 5)
    bad = np.zeros((1, 25), np.int64)
    bad[0, 0] = 99
    with pytest.raises(ValueError, match="unknown op code"):
        _native.recurrent_plan(bad, np.zeros(1, np.float32), [], 0, [], 1, 1)
    missing = DecodeProgram()
    missing.op("add", [missing.scratch(2), missing.scratch(2)], [2])
    with pytest.raises(ValueError, match="operand 2 is missing"):
        missing.plan([], 1, 1)
