"""Wrong inputs for every entry point of the float families (ops, attention, recurrent):
each must raise TypeError/ValueError naming the argument, never crash or write out of
bounds. Table-driven: CASES lists every function with a valid call; each array argument
is then replaced by a wrong dtype, a non-contiguous view, an extra dimension, a shape
off by one, and (for outputs) a read-only array."""
import numpy as np
import pytest

from ryzjupyter import _native

f32 = np.float32


def _a(*shape, dtype=f32, fill=0.5):
    return np.full(shape, fill, dtype=dtype)


def ops_cases():
    return {
        "rmsnorm": ([("out", _a(3, 20)), ("x", _a(3, 20)), ("w", _a(20))], [1e-5], {"out"}),
        "rope": ([("x", _a(3, 2, 8)), ("positions", np.arange(3, dtype=np.int64))], [1e4], {"x"}),
        "rope_table": ([("cs", _a(3, 8)), ("positions", np.arange(3, dtype=np.int64))], [1e4], {"cs"}),
        "rope_apply": ([("x", _a(3, 2, 8)), ("cs", _a(3, 8))], [], {"x"}),
        "softmax": ([("x", _a(3, 9))], [], {"x"}),
        "silu": ([("out", _a(3, 9)), ("x", _a(3, 9))], [], {"out"}),
        "relu2": ([("out", _a(3, 9)), ("x", _a(3, 9))], [], {"out"}),
        "mul": ([("out", _a(3, 9)), ("a", _a(3, 9)), ("b", _a(3, 9))], [], {"out"}),
        "add": ([("out", _a(3, 9)), ("a", _a(3, 9)), ("b", _a(3, 9))], [], {"out"}),
        "layernorm": ([("out", _a(3, 20)), ("x", _a(3, 20)), ("w", _a(20)), ("b", _a(20))], [1e-12], {"out"}),
        "gelu": ([("out", _a(3, 9)), ("x", _a(3, 9))], [], {"out"}),
    }


def attention_cases():
    return {
        "attention": ([("out", _a(2, 4, 8)), ("q", _a(2, 4, 8)), ("k", _a(5, 2, 8)),
                       ("v", _a(5, 2, 8))], [3, 0.35], {"out"}),
        "attention_i8kv": ([("out", _a(2, 4, 8)), ("q", _a(2, 4, 8)), ("k", _a(5, 2, 8, dtype=np.int8, fill=1)),
                            ("k_scales", _a(5, 2)), ("v", _a(5, 2, 8, dtype=np.int8, fill=1)),
                            ("v_scales", _a(5, 2))], [3, 0.35], {"out"}),
        "quantize_kv_i8": ([("q8", _a(3, 2, 8, dtype=np.int8, fill=0)), ("scales", _a(3, 2)),
                            ("x", _a(3, 2, 8))], [], {"q8", "scales"}),
        "attention_kv16": ([("out", _a(2, 4, 8)), ("q", _a(2, 4, 8)), ("k", _a(5, 2, 8, dtype=np.float16)),
                            ("v", _a(5, 2, 8, dtype=np.float16))], [3, 0.35, "f16"], {"out"}),
        "store_kv16": ([("dst", _a(3, 2, 8, dtype=np.uint16, fill=0)), ("x", _a(3, 2, 8))], ["bf16"], {"dst"}),
        "attention_segments": ([("out", _a(5, 2, 8)), ("q", _a(5, 2, 8)), ("k", _a(5, 2, 8)), ("v", _a(5, 2, 8)),
                                ("offsets", np.array([0, 2, 5], np.int64))], [0.35], {"out"}),
    }


def recurrent_cases():
    T, D, K, N, A = 3, 10, 4, 5, 9
    return {
        "mamba_conv1d": ([("out", _a(T, D)), ("state", _a(D, K)), ("x", _a(T, D)), ("w", _a(D, K)),
                          ("bias", _a(D))], [], {"out", "state"}),
        "mamba_conv1d_step": ([("out", _a(D)), ("state", _a(D, K)), ("x", _a(D)), ("w", _a(D, K)),
                               ("bias", _a(D))], [], {"out", "state"}),
        "mamba_scan": ([("y", _a(T, D)), ("h", _a(D, N)), ("u", _a(T, D)), ("dt", _a(T, D)),
                        ("A", _a(D, N, fill=-1.0)), ("B", _a(T, N)), ("C", _a(T, N)), ("D", _a(D)),
                        ("z", _a(T, D))], [], {"y", "h"}),
        "mamba_scan_step": ([("y", _a(D)), ("h", _a(D, N)), ("u", _a(D)), ("dt", _a(D)),
                             ("A", _a(D, N, fill=-1.0)), ("B", _a(N)), ("C", _a(N)), ("D", _a(D)),
                             ("z", _a(D))], [], {"y", "h"}),
        "rwkv4_wkv": ([("out", _a(T, A)), ("aa", _a(A)), ("bb", _a(A)), ("pp", _a(A)), ("k", _a(T, A)),
                       ("v", _a(T, A)), ("time_decay", _a(A)), ("time_first", _a(A))], [],
                      {"out", "aa", "bb", "pp"}),
        "rwkv4_wkv_step": ([("out", _a(A)), ("aa", _a(A)), ("bb", _a(A)), ("pp", _a(A)), ("k", _a(A)),
                            ("v", _a(A)), ("time_decay", _a(A)), ("time_first", _a(A))], [],
                           {"out", "aa", "bb", "pp"}),
    }


CASE_BUILDERS = [ops_cases, attention_cases, recurrent_cases]


def all_cases():
    out = {}
    for b in CASE_BUILDERS:
        out.update(b())
    return out


def _call(fn, arrays, scalars):
    return getattr(_native, fn)(*[a for _, a in arrays], *scalars)


NAMES = sorted(all_cases())


@pytest.mark.parametrize("fn", NAMES)
def test_valid_call_works(fn):
    arrays, scalars, _ = all_cases()[fn]
    assert _call(fn, arrays, scalars) is None


def _mutations(name, arr, alone=False):
    bad_dtype = np.float64 if arr.dtype == f32 else (np.uint8 if arr.dtype == np.int8 else np.int32)
    yield "dtype", arr.astype(bad_dtype), TypeError, f"{name} must have dtype"
    if arr.size > 1:
        wide = np.repeat(arr, 2, axis=-1)
        yield "strided", wide[..., ::2], ValueError, f"{name} must be C-contiguous"
    yield "ndim", arr[None], ValueError, None
    if arr.ndim >= 1 and not alone:  # a lone array (softmax's x) may have any shape
        yield "shape", np.concatenate([arr, arr[..., :1]], axis=-1), ValueError, None
        yield "shape0", np.concatenate([arr, arr[:1]], axis=0), ValueError, None
    yield "list", arr.tolist(), TypeError, f"{name} must be a numpy array"


@pytest.mark.parametrize("fn", NAMES)
def test_each_array_argument_is_checked(fn):
    arrays, scalars, outputs = all_cases()[fn]
    for i, (name, arr) in enumerate(arrays):
        for kind, bad, exc, msg in _mutations(name, arr, alone=len(arrays) == 1):
            args = [(n, a.copy()) for n, a in arrays]
            args[i] = (name, bad)
            with pytest.raises(exc) as info:
                _call(fn, args, scalars)
            if msg:
                assert msg in str(info.value), (fn, name, kind, str(info.value))
        if name in outputs:
            ro = arr.copy()
            ro.flags.writeable = False
            args = [(n, a.copy()) for n, a in arrays]
            args[i] = (name, ro)
            with pytest.raises(ValueError, match=f"{name} must be a writable"):
                _call(fn, args, scalars)


@pytest.mark.parametrize("fn", NAMES)
def test_wrong_argument_count(fn):
    arrays, scalars, _ = all_cases()[fn]
    args = [a for _, a in arrays] + list(scalars)
    with pytest.raises(TypeError):
        getattr(_native, fn)(*args[:-1])
    with pytest.raises(TypeError):
        getattr(_native, fn)(*args, 1)


@pytest.mark.parametrize("fn", ["silu", "relu2", "mul", "add", "rmsnorm"])
def test_partial_overlap_refused_exact_alias_allowed(fn):
    # out = rows 1..3 of buf, input = rows 0..2 of buf: overlapping but not identical
    buf = _a(4, 9, fill=0.25)
    out, inp = buf[1:], buf[:3]
    if fn == "rmsnorm":
        call = lambda o, x: _native.rmsnorm(o, x, _a(9), 1e-5)
    elif fn in ("silu", "relu2"):
        call = lambda o, x: getattr(_native, fn)(o, x)
    else:
        call = lambda o, x: getattr(_native, fn)(o, x, _a(3, 9))
    with pytest.raises(ValueError, match="overlap"):
        call(out, inp)
    call(out, out)  # exactly the same memory: in place is fine


def test_bad_scalars():
    x = _a(3, 20)
    with pytest.raises(ValueError, match="eps must be finite"):
        _native.rmsnorm(np.empty_like(x), x, _a(20), float("nan"))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        _native.rmsnorm(np.empty_like(x), x, _a(20), -1.0)
    with pytest.raises(TypeError, match="eps must be a float"):
        _native.rmsnorm(np.empty_like(x), x, _a(20), "1e-5")
    q = _a(2, 2, 8)
    with pytest.raises(ValueError, match="theta must be > 0"):
        _native.rope(q, np.zeros(2, np.int64), 0.0)
    with pytest.raises(ValueError, match="theta must be finite"):
        _native.rope(q, np.zeros(2, np.int64), float("inf"))
    with pytest.raises(ValueError, match="even"):
        _native.rope(_a(2, 2, 7), np.zeros(2, np.int64), 1e4)
    with pytest.raises(ValueError, match=r"positions\[1\] is -1"):
        _native.rope(q, np.array([0, -1], np.int64), 1e4)
    with pytest.raises(ValueError, match="positions must not share memory|positions"):
        buf = np.zeros(16, np.int64)
        _native.rope(buf.view(np.float32).reshape(2, 2, 8), buf[:2], 1e4)


@pytest.mark.parametrize("fn", ["mamba_conv1d", "mamba_scan", "rwkv4_wkv"])
def test_recurrent_state_must_not_alias_inputs(fn):
    arrays, scalars, outputs = recurrent_cases()[fn]
    names = [n for n, _ in arrays]
    args = [a.copy() for _, a in arrays]
    state_name = {"mamba_conv1d": "state", "mamba_scan": "h", "rwkv4_wkv": "aa"}[fn]
    i = names.index(state_name)
    # the state passed again as a same-shaped input: refused, naming both
    j = next(j for j, a in enumerate(args) if j != i and a.shape == args[i].shape and names[j] not in outputs)
    args[j] = args[i]
    with pytest.raises(ValueError, match="must not share memory"):
        getattr(_native, fn)(*args, *scalars)


def test_conv_kernel_size_limits():
    with pytest.raises(ValueError, match="kernel size"):
        _native.mamba_conv1d(_a(2, 4), _a(4, 17), _a(2, 4), _a(4, 17), None)
    with pytest.raises(ValueError, match="kernel size"):
        _native.mamba_conv1d(_a(2, 4), _a(4, 0), _a(2, 4), _a(4, 0), None)
    with pytest.raises(ValueError, match=r"w.shape\[1\]"):
        _native.mamba_conv1d(_a(2, 4), _a(4, 4), _a(2, 4), _a(4, 3), None)
