"""Every native entry point (`ryzjupyter._native`) through its Python binding, with arguments that
start from a valid call and are mutated: an array's dtype, shape, contiguity, writability or
contents, an argument aliased to another, a number out of range, a wrong type, an argument
dropped or added, one model's decode plan with another model's caches. Allowed: the call
returns, or raises TypeError/ValueError/OverflowError (Python's own for an int that does not fit
a C type) with a message. A plan that recurrent_plan accepts is then run (one decode step of the
last token it accepts): a plan that passed the checks must be safe. A segfault or abort ends the
process: the runner reports the input. An input that starts with `@NAME` and a newline calls that
binding (the regression cases: their bytes keep their meaning when bindings are added).

The valid calls are recorded from real use (the packed fixture loaded with each ternary layout,
head and KV cache format, generating, batching and verifying; the online fixture), plus the
float families' table of tests/native/test_safety.py and hand-made calls for the rest."""

import sys
from pathlib import Path

import atheris
import numpy as np

from ryzjupyter import _native

from ..common import Finding

ROOT = Path(__file__).resolve().parents[3]
SKIP = {"info", "probe_int8", "probe_loops", "probe_read", "get_num_threads"}   # benchmarks, no input
CALLS: dict[str, list] = {}


def _record():
    def wrap(name, f):
        def rec(*args):
            if name not in CALLS:
                CALLS[name] = [[a.copy() for a in x] if isinstance(x, list) and all(isinstance(a, np.ndarray) for a in x)
                               else x.copy() if isinstance(x, np.ndarray) else x for x in args]
            return f(*args)
        return rec

    real = {n: getattr(_native, n) for n in dir(_native) if not n.startswith("_") and callable(getattr(_native, n))}
    for n, f in real.items():
        setattr(_native, n, wrap(n, f))
    try:
        import ryzjupyter
        fx = ROOT / "tests" / "fixtures" / "bitnet"
        for kw in ({}, dict(ternary_layout="tl", lm_head="int8", kv_cache="int8"),
                   dict(ternary_layout="t5", lm_head="int4"), dict(kv_cache="bf16")):
            m = ryzjupyter.load(str(fx / "packed"), **kw)
            m.generate([1, 2, 3, 4], max_new_tokens=3, temperature=0)
            m.forward_batch([[5], [6]], [m.new_cache(), m.new_cache()])
            c = m.new_cache()
            m.forward([1, 2], c)
            m.verify([3, 4, 5], c)
        m = ryzjupyter.load(str(fx / "online"), convert_cache=False)
        m.generate([1, 2], max_new_tokens=2)
        rec = ryzjupyter.load(str(ROOT / "tests" / "fixtures" / "recurrent" / "mamba_f32"))  # recurrent_plan/_decode
        rec.new_session().generate([1, 2, 3], max_new_tokens=3, temperature=0, ignore_eos=True)
    finally:
        for n, f in real.items():
            setattr(_native, n, f)
    sys.path.insert(0, str(ROOT))
    from tests.native.test_safety import all_cases
    for name, (arrays, scalars, _) in all_cases().items():
        CALLS.setdefault(name, [a for _, a in arrays] + list(scalars))
    r = np.random.default_rng(0)
    N, K = 7, 20
    xq, xs = r.integers(-128, 128, (1, K), dtype=np.int8), np.ones(1, np.float32)
    wq, ws = r.integers(-128, 128, (N, K), dtype=np.int8), np.ones(N, np.float32)
    CALLS.setdefault("lm_head_i8", [np.zeros((1, N), np.float32), xq, xs, wq, ws])
    CALLS.setdefault("lm_head_i8_tokens", [np.zeros((3, N), np.float32), np.repeat(xq, 3, 0), np.ones(3, np.float32), wq, ws])
    trits = r.integers(-1, 2, (N, K), dtype=np.int8)
    for lay in ("i2", "tl", "t5"):
        packed = np.zeros((N, getattr(_native, f"{lay}_row_bytes")(K)), np.uint8)
        getattr(_native, f"pack_{lay}")(packed, trits)
        CALLS.setdefault(f"ternary_matmul_{lay}", [np.zeros((2, N), np.int32), packed, r.integers(-128, 128, (2, K), dtype=np.int8)])
        CALLS.setdefault(f"unpack_{lay}", [np.zeros((N, K), np.int8), packed])
    from ryzjupyter.families import bitnet_decode
    m = ryzjupyter.load(str(fx / "packed"))
    bitnet_decode.ensure_i2(m)
    layers, eps, theta, scale, act = bitnet_decode._plan(m)
    c = m.new_cache()
    CALLS.setdefault("bitnet_decode_layer", [np.zeros(m.config.dim, np.float32), c.k[0], c.v[0], 0, tuple(layers[0][0]),
                                             tuple(layers[0][1]), eps, theta, scale, act])
    if hasattr(_native, "gemm_f32"):          # out [M, N] = x [M, K] @ w.T + bias, w in panels of 16 rows
        M, Nn, Kk = 3, 20, 8
        CALLS.setdefault("gemm_f32", [np.zeros((M, Nn), np.float32), r.standard_normal((M, Kk)).astype(np.float32),
                                      r.standard_normal(((Nn + 15) // 16, Kk, 16)).astype(np.float32),
                                      np.zeros(Nn, np.float32)])
    if hasattr(_native, "gemm_f16"):          # gemm_f32 with the panels in float16
        M, Nn, Kk = 3, 20, 8
        CALLS.setdefault("gemm_f16", [np.zeros((M, Nn), np.float32), r.standard_normal((M, Kk)).astype(np.float32),
                                      r.standard_normal(((Nn + 15) // 16, Kk, 16)).astype(np.float16),
                                      np.zeros(Nn, np.float32)])
    H, Nh, T = 2, 8, 3
    CALLS.setdefault("rwkv7_wkv", [np.zeros((T, H * Nh), np.float32), np.zeros((H, Nh, Nh), np.float32)]
                     + [r.standard_normal((T, H * Nh)).astype(np.float32) for _ in range(6)])
    CALLS.setdefault("set_isa", ["scalar"])
    CALLS.setdefault("set_num_threads", [2])
    CALLS.setdefault("set_thread_limit", [1])
    CALLS.setdefault("set_attention_variant", ["tiled"])
    missing = sorted(set(real) - set(CALLS) - SKIP)
    if missing:
        raise RuntimeError(f"no valid call recorded for {missing}: add one to tests/fuzz/harnesses/native_args.py")


_record()
NAMES = sorted(n for n in CALLS if n not in SKIP and hasattr(_native, n))
PLANS = [a for args in CALLS.values() for a in args if type(a).__name__ == "PyCapsule"]
DTYPES = (np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.uint16, np.float16, np.bool_)
INTS = (0, 1, -1, 2, 3, 7, 64, 255, 256, 2**31 - 1, 2**31, -2**31 - 1, 2**63 - 1, 2**63, -2**63, 2**64, 10**30)
FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), float("-inf"), 1e308)
OTHERS = (None, "x", b"x", [], (), {}, 1.5, True, object(), np.float32(1.0), np.int64(3))


def _new_shape(fdp, shape):
    shape = list(shape)
    op = fdp.ConsumeIntInRange(0, 4)
    if op == 0 and shape:
        shape[fdp.ConsumeIntInRange(0, len(shape) - 1)] += fdp.ConsumeIntInRange(-2, 2)
    elif op == 1:
        shape.append(fdp.ConsumeIntInRange(0, 3))
    elif op == 2 and shape:
        shape.pop(fdp.ConsumeIntInRange(0, len(shape) - 1))
    elif op == 3 and shape:
        shape[fdp.ConsumeIntInRange(0, len(shape) - 1)] = 0
    return tuple(max(0, min(s, 4096)) for s in shape)


def _fill(fdp, a):
    kind = fdp.ConsumeIntInRange(0, 3)
    if a.size == 0:
        return a
    if kind == 0:
        v = fdp.PickValueInList([0, 1, -1, 127, -128, 255]) if a.dtype.kind in "iub" else fdp.PickValueInList(list(FLOATS))
        a.flat[fdp.ConsumeIntInRange(0, a.size - 1)] = np.array(v).astype(a.dtype)     # wraps, as C would
    elif kind == 1:                      # a window of raw bytes: any field of a program, any value
        start = fdp.ConsumeIntInRange(0, a.nbytes - 1)
        raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, min(a.nbytes - start, 4096)))
        a.view(np.uint8).reshape(-1)[start:start + len(raw)] = np.frombuffer(raw, np.uint8)
    elif kind == 2 and a.dtype.kind == "f":
        a[...] = fdp.PickValueInList(list(FLOATS))
    return a


def _mutate_array(fdp, a, args):
    op = fdp.ConsumeIntInRange(0, 9)
    if op == 0:
        return a.astype(fdp.PickValueInList(list(DTYPES)))
    if op == 1:
        return np.zeros(_new_shape(fdp, a.shape), a.dtype)
    if op == 2 and a.ndim and a.shape[-1] > 1:
        return a[..., ::2]                                               # not contiguous
    if op == 3 and a.ndim >= 2:
        return a.T
    if op == 4:
        b = a.copy()
        b.flags.writeable = False
        return b
    if op == 5:
        others = [x for x in args if isinstance(x, np.ndarray) and x is not a]
        if others:
            o = fdp.PickValueInList(others)
            if o.dtype == a.dtype and o.size >= a.size:
                return o.reshape(-1)[:a.size].reshape(a.shape)           # aliases another argument
            return o
    if op == 6:
        return _fill(fdp, a.copy())
    if op == 7:
        return fdp.PickValueInList(list(OTHERS))
    return a


def _mutate(fdp, x, args):
    if isinstance(x, np.ndarray):
        return _mutate_array(fdp, x, args)
    if isinstance(x, list) and x and all(isinstance(a, np.ndarray) for a in x):
        op = fdp.ConsumeIntInRange(0, 3)
        if op == 0:
            return x[:-1]
        if op == 1:
            return x + [x[0]]
        if op == 2:
            i = fdp.ConsumeIntInRange(0, len(x) - 1)
            return x[:i] + [_mutate_array(fdp, x[i], args)] + x[i + 1:]
        return list(x)
    if type(x).__name__ == "PyCapsule":
        return fdp.PickValueInList(PLANS) if fdp.ConsumeBool() else x
    if isinstance(x, bool) or x is None:
        return fdp.PickValueInList(list(OTHERS) + [x])
    if isinstance(x, int):
        return fdp.PickValueInList(list(INTS) + [x, x + 1, x - 1, -x])
    if isinstance(x, float):
        return fdp.PickValueInList(list(FLOATS) + [x])
    if isinstance(x, (tuple, list)):
        items = list(x)
        if items and fdp.ConsumeBool():
            i = fdp.ConsumeIntInRange(0, len(items) - 1)
            items[i] = _mutate(fdp, items[i], args)
        elif fdp.ConsumeBool():
            items = items[:-1]
        return type(x)(items)
    if isinstance(x, str):
        return fdp.PickValueInList(["scalar", "avx2", "avx512vnni", "", "bogus", "t5", "i2", "tl", "x" * 300])
    return x


def _run_plan(plan, args):
    """A recurrent plan that passed recurrent_plan's checks must be safe to run: one decode step of
    the last token the plan accepts, with states and logits of the sizes it was made for."""
    state_lens, n_logits, vocab = args[4], args[5], args[6]
    if not (isinstance(state_lens, list) and all(type(n) is int for n in state_lens) and type(n_logits) is int
            and type(vocab) is int and sum(state_lens) + n_logits <= 1 << 26):
        return
    _native.recurrent_decode(plan, vocab - 1, [np.zeros(n, np.float32) for n in state_lens],
                             np.zeros(n_logits, np.float32))


def _pick_name(fdp, data):
    """`@NAME\n` before the fuzzed bytes names the binding (a regression case keeps its meaning
    when bindings are added); otherwise the bytes pick it."""
    if data.startswith(b"@"):
        head, _, _ = data.partition(b"\n")
        name = head[1:].decode("ascii", "replace")
        if name in NAMES:
            return name, atheris.FuzzedDataProvider(data[len(head) + 1:])
    return fdp.PickValueInList(NAMES), fdp


def one_input(data: bytes):
    name, fdp = _pick_name(atheris.FuzzedDataProvider(data), data)
    base = [a.copy() if isinstance(a, np.ndarray) else list(a) if isinstance(a, list) else a for a in CALLS[name]]
    args = list(base)
    for i in range(len(args)):
        if fdp.ConsumeIntInRange(0, 3) == 0:
            args[i] = _mutate(fdp, args[i], base)
    tail = fdp.ConsumeIntInRange(0, 15)
    if tail == 0 and args:
        args = args[:fdp.ConsumeIntInRange(0, len(args) - 1)]
    elif tail == 1:
        args.append(fdp.PickValueInList(list(OTHERS) + list(INTS)))
    fn = getattr(_native, name)
    previous = (_native.info()["isa"], _native.get_num_threads())
    allowed = (TypeError, ValueError, OverflowError) + ((RuntimeError,) if name == "set_isa" else ())
    try:
        out = fn(*args)
        if name == "recurrent_plan":
            _run_plan(out, args)
    except allowed as e:                     # set_isa: RuntimeError for a level this CPU lacks (documented)
        if len(str(e).strip()) < 8:
            raise Finding(f"{name}: {type(e).__name__} with a message that says nothing: {e!r}") from e
    except Exception as e:
        raise Finding(f"{name}: {type(e).__name__} escaped: {e}") from e
    finally:
        _native.set_isa(previous[0])
        _native.set_num_threads(previous[1])
        if hasattr(_native, "set_thread_limit"):
            _native.set_thread_limit(0)
