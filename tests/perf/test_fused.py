"""The fused one-token decode (``_native.bitnet_decode_token`` via ryzjupyter.families.bitnet_decode, and
``bitnet_decode_layer`` for one layer) gives bitwise the same logits and KV cache as the engine's
Python forward pass, on every fixture checkpoint and every ISA level, with 1 and 2 threads, also
past the attention split (long context: the cache is filled with random rows)."""
import gc
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.families import bitnet_decode
from ryzjupyter.families.bitnet import BitNetModel

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "bitnet"
FORMATS = ["packed", "autobitlinear_offline", "online", "onebitllm", "untied", "rope_parameters"]


def _load(name, **kw):
    return BitNetModel(FIX / name, **kw)


def _seq():
    man = json.loads((FIX / "manifest.json").read_text())
    return [int(t) for t in man["sequences"][0]]


def _check_same(model, prompt, steps, n_prefill=4):
    assert bitnet_decode.ensure_i2(model)
    model.fused_decode = False                                  # the reference: the Python path
    ca, cb = model.new_cache(), model.new_cache()
    model.forward(prompt[:n_prefill], ca)
    model.forward(prompt[:n_prefill], cb)
    for t in prompt[n_prefill:n_prefill + steps]:
        ref = model.forward([t], ca)
        got = bitnet_decode.forward_one(model, [t], cb)
        np.testing.assert_array_equal(got, ref)
    n = len(ca)
    assert len(cb) == n and ca.tokens == cb.tokens
    for l in range(model.config.n_layers):
        np.testing.assert_array_equal(cb.k[l][:n], ca.k[l][:n])
        np.testing.assert_array_equal(cb.v[l][:n], ca.v[l][:n])
        if getattr(ca, "dtype", "f32") == "int8":
            np.testing.assert_array_equal(cb.ks[l][:n], ca.ks[l][:n])
            np.testing.assert_array_equal(cb.vs[l][:n], ca.vs[l][:n])


@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_logits_equal_forward(fmt, isa, threads):
    model = _load(fmt, lm_head="f32")
    _check_same(model, _seq(), steps=6)


@pytest.mark.parametrize("fmt", ["packed", "onebitllm"])
def test_fused_int8_kv_cache_equals_forward(fmt, isa, threads):
    model = _load(fmt, lm_head="int8", kv_cache="int8")
    _check_same(model, _seq(), steps=6)


@pytest.mark.parametrize("kv", ["f16", "bf16"])
@pytest.mark.parametrize("fmt", ["packed", "onebitllm"])
def test_fused_16bit_kv_cache_equals_forward(fmt, kv, isa, threads):
    model = _load(fmt, lm_head="int8", kv_cache=kv)
    _check_same(model, _seq(), steps=6)


@pytest.mark.parametrize("kv", ["f16", "bf16"])
def test_fused_16bit_kv_cache_long_context(kv, isa):
    """Past the attention split, over a 16-bit cache: the fused call and the Python path agree."""
    model = _load("packed", lm_head="int8", kv_cache=kv)
    assert bitnet_decode.ensure_i2(model)
    model.fused_decode = False
    ca, cb = model.new_cache(1200), model.new_cache(1200)
    _fill_random((ca, cb), 1100)
    for t in (5, 17, 3):
        np.testing.assert_array_equal(bitnet_decode.forward_one(model, [t], cb), model.forward([t], ca))


@pytest.mark.parametrize("fmt,kv", [("packed", "f32"), ("untied", "int8")])
def test_fused_int4_head_equals_forward(fmt, kv, isa, threads):
    """The int4 lm_head (lossy vs f32, but one definition): the fused decode and the Python
    path give bitwise the same logits."""
    model = _load(fmt, lm_head="int4", kv_cache=kv)
    assert model.weights.lm_head_p4 is not None
    _check_same(model, _seq(), steps=6)


def _fill_random(caches, ctx):
    """The same ctx rows of random keys/values in every layer of each cache (in its format)."""
    for c in caches:
        for l in range(c.n_layers):
            rng2 = np.random.default_rng(l)
            shape = c.k[l][:ctx].shape
            c.store(l, 0, rng2.standard_normal(shape, dtype=np.float32), rng2.standard_normal(shape, dtype=np.float32))
        c.append([1] * ctx)


def test_fused_int8_head_and_long_context(isa):
    """Past RYZ_ATTN_MIN_PART_ROWS rows the attention splits each kv head's rows (and merges)."""
    model = _load("packed", lm_head="int8")
    assert bitnet_decode.ensure_i2(model)
    model.fused_decode = False
    ca, cb = model.new_cache(1200), model.new_cache(1200)
    _fill_random((ca, cb), 1100)
    for t in (5, 17, 3):
        np.testing.assert_array_equal(bitnet_decode.forward_one(model, [t], cb), model.forward([t], ca))


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory):
    """A random-weight model big enough that every GEMV of the fused layer is split between
    threads (the worker that prefetched the next weights during the serial steps takes more
    rows): dim 256, 4 heads of 64, ffn 512."""
    from ryzjupyter.bench import model as bm
    return bm.random_model_folder(bm.SHAPES["tiny"], tmp_path_factory.mktemp("fused"))


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
def test_fused_split_gemv_any_thread_count(random_folder, isa, n_threads):
    """The fused layer's GEMV split moves rows to the prefetching worker and the pool runs a
    side job (the prefetch) while the caller computes: neither may change a bit, with any
    thread count (3 and 4 oversubscribe this machine: the caller runs unclaimed parts), at a
    short context (attention on the caller, inside the prefetch window) and past the
    attention split (the window closes around the parallel attention)."""
    previous = _native.get_num_threads()
    _native.set_num_threads(n_threads)
    try:
        model = BitNetModel(random_folder, lm_head="int8")
        assert bitnet_decode.ensure_i2(model)
        model.fused_decode = False
        for ctx in (3, 300):
            ca, cb = model.new_cache(400), model.new_cache(400)
            _fill_random((ca, cb), ctx)
            for t in (5, 17, 3, 900):
                np.testing.assert_array_equal(bitnet_decode.forward_one(model, [t], cb), model.forward([t], ca))
            n = len(ca)
            for l in range(ca.n_layers):
                np.testing.assert_array_equal(cb.k[l][:n], ca.k[l][:n])
                np.testing.assert_array_equal(cb.v[l][:n], ca.v[l][:n])
    finally:
        _native.set_num_threads(previous)


@pytest.fixture(scope="module")
def churn_folder(tmp_path_factory):
    """Rows enough that every thread's range of the FFN GEMVs and of the head is several
    64 KiB stealing chunks (gate + up: 4096 rows of 256 bytes; head: 8192 rows of 1024)."""
    from ryzjupyter.bench import model as bm
    shape = dict(hidden_size=1024, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=8192)
    return bm.random_model_folder(shape, tmp_path_factory.mktemp("churn"))


@pytest.mark.parametrize("n_threads", [2, 3])
def test_token_call_churn_computes_every_row_once(churn_folder, n_threads):
    """300 token calls at the same position (each ~20 pool jobs: GEMVs whose rows the threads
    claim in chunks and steal from each other's ends, side jobs around the serial steps) give
    the same logits, x and KV row every time. The logits start as NaN, x is reset and each call
    rewrites the cache row: a row the pool skips or computes twice shows. 3 threads oversubscribe this
    machine, so the caller also runs parts no worker has claimed."""
    previous = _native.get_num_threads()
    _native.set_num_threads(n_threads)
    try:
        model = BitNetModel(churn_folder, lm_head="int8")
        assert bitnet_decode.install(model)
        bitnet_decode._plan(model)
        assert model._fused_head                                # the int8 head is in the call
        cache = model.new_cache(64)
        _fill_random((cache,), 20)
        x0 = np.random.default_rng(1).standard_normal(model.config.dim).astype(np.float32)
        ref = None
        for it in range(300):
            x = x0.copy()
            out = np.full((1, model.config.vocab_size), np.nan, np.float32)
            _native.bitnet_decode_token(model._fused_native, x, cache.k, cache.v, 20, None, None, out)
            got = (out.copy(), x, cache.k[0][20].copy(), cache.v[-1][20].copy())
            if ref is None:
                ref = got
                assert np.isfinite(ref[0]).all()
            for a, b in zip(got, ref):
                assert np.array_equal(a, b), f"call {it}"
    finally:
        _native.set_num_threads(previous)


def test_install_routes_single_tokens_only():
    model = _load("packed")
    seq = _seq()
    bitnet_decode.uninstall(model)
    ref = model.forward(seq[:5], model.new_cache(), all_logits=True)
    assert bitnet_decode.install(model)
    c = model.new_cache()
    out = model.forward(seq[:4], c, all_logits=True)          # prefill: the Python path
    np.testing.assert_array_equal(out, ref[:4])
    np.testing.assert_array_equal(model.forward(seq[4:5], c), ref[4:5])
    bitnet_decode.uninstall(model)
    assert "forward" not in model.__dict__ and model.fused_decode is False
    np.testing.assert_array_equal(model.forward(seq[:1], model.new_cache()), ref[:1])


def layer0_args(model):
    """(x, cache, weights, mults, eps, theta, scale, act) for calling bitnet_decode_layer on
    layer 0 of `model` (repacked to I2) by hand."""
    assert bitnet_decode.ensure_i2(model)
    layers, eps, theta, scale, act = bitnet_decode._plan(model)
    ws, mults = layers[0]
    return np.zeros(model.config.dim, np.float32), model.new_cache(), ws, mults, eps, theta, scale, act


def test_bad_arguments():
    x, c, ws, mults, eps, theta, scale, act = layer0_args(_load("packed"))
    with pytest.raises(ValueError, match="pos"):
        _native.bitnet_decode_layer(x, c.k[0], c.v[0], c.max_len, ws, mults, eps, theta, scale, act)
    with pytest.raises(ValueError, match="11"):
        _native.bitnet_decode_layer(x, c.k[0], c.v[0], 0, ws[:5], mults, eps, theta, scale, act)
    with pytest.raises(TypeError):
        _native.bitnet_decode_layer(x.astype(np.float64), c.k[0], c.v[0], 0, ws, mults, eps, theta, scale, act)
    with pytest.raises(ValueError, match="act"):
        _native.bitnet_decode_layer(x, c.k[0], c.v[0], 0, ws, mults, eps, theta, scale, 7)
    bad = list(ws)
    bad[1] = ws[2]                                              # wq with the wrong rows
    with pytest.raises(ValueError):
        _native.bitnet_decode_layer(x, c.k[0], c.v[0], 0, tuple(bad), mults, eps, theta, scale, act)
    with pytest.raises(ValueError, match="NaN"):
        _native.bitnet_decode_layer(np.full_like(x, np.nan), c.k[0], c.v[0], 0, ws, mults, eps, theta, scale, act)


@pytest.mark.parametrize("shape", [(37, 300), (128, 2560), (1000, 64), (5, 1), (16, 4096), (7, 200)])
def test_lm_head_i8_equals_matmul_i8(isa, threads, shape, rng):
    N, Kd = shape
    w = rng.integers(-128, 128, (N, Kd), dtype=np.int8)
    ws = rng.uniform(0.5, 2, N).astype(np.float32)
    x = rng.standard_normal((1, Kd)).astype(np.float32)
    xq, xs = np.empty((1, Kd), np.int8), np.empty(1, np.float32)
    _native.quantize_rows_i8(xq, xs, x)
    a, b = np.empty((1, N), np.float32), np.empty((1, N), np.float32)
    _native.matmul_i8(a, xq, xs, w, ws)
    _native.lm_head_i8(b, xq, xs, w, ws)
    np.testing.assert_array_equal(a, b)
    xq[:] = -128                                                 # extremes: exact, no overflow
    w[:] = -128
    _native.matmul_i8(a, xq, xs, w, ws)
    _native.lm_head_i8(b, xq, xs, w, ws)
    np.testing.assert_array_equal(a, b)


def test_lm_head_i8_checks_arguments():
    w = np.zeros((8, 64), np.int8)
    ws = np.ones(8, np.float32)
    xq, xs, out = np.zeros((1, 64), np.int8), np.ones(1, np.float32), np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError):
        _native.lm_head_i8(np.zeros((2, 8), np.float32), xq, xs, w, ws)
    with pytest.raises(ValueError):
        _native.lm_head_i8(out, np.zeros((1, 32), np.int8), xs, w, ws)
    with pytest.raises(TypeError):
        _native.lm_head_i8(out, xq, xs, w.astype(np.uint8), ws)
    with pytest.raises(ValueError):
        _native.lm_head_i8(out, xq, xs, w, np.ones(7, np.float32))


def _token_args(model):
    """(plan with the int8 head, layers, eps, theta, scale, act) of a model with lm_head="int8"."""
    assert bitnet_decode.ensure_i2(model)
    layers, eps, theta, scale, act = bitnet_decode._plan(model)
    w = model.weights
    plan = _native.bitnet_decode_plan(layers, eps, theta, scale, act, "i2", (w.norm, w.lm_head_q, w.lm_head_s))
    return plan, layers, eps, theta, scale, act


def test_decode_token_equals_layer_calls_and_head(isa, threads, rng):
    model = _load("packed", lm_head="int8")
    plan, layers, eps, theta, scale, act = _token_args(model)
    cfg, w = model.config, model.weights
    ca, cb = model.new_cache(), model.new_cache()
    x0 = rng.standard_normal(cfg.dim).astype(np.float32)
    for pos in range(3):
        xa, xb = x0.copy(), x0.copy()
        for l, (ws, mults) in enumerate(layers):
            _native.bitnet_decode_layer(xa, ca.k[l], ca.v[l], pos, ws, mults, eps, theta, scale, act)
        ref = np.empty((1, cfg.vocab_size), np.float32)
        h = np.empty((1, cfg.dim), np.float32)
        xq, xs = np.empty((1, cfg.dim), np.int8), np.empty(1, np.float32)
        _native.rmsnorm(h, xa[None], w.norm, cfg.norm_eps)
        _native.quantize_rows_i8(xq, xs, h)
        _native.lm_head_i8(ref, xq, xs, w.lm_head_q, w.lm_head_s)
        got = np.full((1, cfg.vocab_size), np.nan, np.float32)
        layers_s, head_s = _native.bitnet_decode_token(plan, xb, cb.k, cb.v, pos, None, None, got)
        assert layers_s > 0 and head_s > 0
        np.testing.assert_array_equal(xb, xa)                   # x: the last layer's output
        np.testing.assert_array_equal(got, ref)
        for l in range(cfg.n_layers):
            np.testing.assert_array_equal(cb.k[l][:pos + 1], ca.k[l][:pos + 1])
            np.testing.assert_array_equal(cb.v[l][:pos + 1], ca.v[l][:pos + 1])
        xc = x0.copy()                                          # without logits: the layers only
        assert _native.bitnet_decode_token(plan, xc, cb.k, cb.v, pos)[1] == 0.0
        np.testing.assert_array_equal(xc, xa)


def test_decode_plan_holds_its_weights(rng):
    """The plan keeps the arrays' memory: copies dropped after the plan is made still give
    the result of the originals."""
    model = _load("packed", lm_head="int8")
    plan, layers, eps, theta, scale, act = _token_args(model)
    copies = [(tuple(np.array(a, copy=True) for a in ws), mults) for ws, mults in layers]
    w = model.weights
    head = (w.norm.copy(), w.lm_head_q.copy(), w.lm_head_s.copy())
    wq = copies[0][0][1]
    refs = sys.getrefcount(wq)
    plan2 = _native.bitnet_decode_plan(copies, eps, theta, scale, act, "i2", head)
    assert sys.getrefcount(wq) == refs + 1                      # its buffer is held
    dropped = _native.bitnet_decode_plan(copies, eps, theta, scale, act, "i2", head)
    del dropped
    assert sys.getrefcount(wq) == refs + 1                      # and released with the plan
    del copies, head, wq
    gc.collect()
    junk = [np.full(a.shape, 7, a.dtype) for ws, _ in layers for a in ws]   # reuse freed memory
    cfg = model.config
    x0 = rng.standard_normal(cfg.dim).astype(np.float32)
    outs = []
    for p in (plan, plan2):
        c, x, out = model.new_cache(), x0.copy(), np.empty((1, cfg.vocab_size), np.float32)
        _native.bitnet_decode_token(p, x, c.k, c.v, 0, None, None, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    del junk


def test_decode_plan_names_the_bad_constant():
    """The plan's scalars go through pyarg.c's shared checks: each message names the argument,
    its value and what it must be (once one message for eps, theta and scale together)."""
    model = _load("packed", lm_head="int8")
    _, layers, eps, theta, scale, act = _token_args(model)
    for args, want in [((-1.0, theta, scale), "^eps must be >= 0, got -1$"),
                       ((float("nan"), theta, scale), "^eps must be finite, got nan$"),
                       ((eps, 0.0, scale), "^theta must be > 0, got 0$"),
                       ((eps, theta, float("inf")), "^scale must be finite, got inf$")]:
        with pytest.raises(ValueError, match=want):
            _native.bitnet_decode_plan(layers, *args, act)
    w, m = layers[1]
    bad = list(m)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"^layer 1: mults\[3\] must be finite, got nan$"):
        _native.bitnet_decode_plan([layers[0], (w, tuple(bad))], eps, theta, scale, act)
    bad[3] = "x"
    with pytest.raises(TypeError, match=r"^layer 1: mults\[3\] must be a float, got str$"):
        _native.bitnet_decode_plan([layers[0], (w, tuple(bad))], eps, theta, scale, act)


def test_decode_plan_and_token_check_arguments():
    model = _load("packed", lm_head="int8")
    plan, layers, eps, theta, scale, act = _token_args(model)
    cfg, w = model.config, model.weights
    c, x = model.new_cache(), np.zeros(cfg.dim, np.float32)
    out = np.empty((1, cfg.vocab_size), np.float32)
    with pytest.raises(ValueError, match="layers"):
        _native.bitnet_decode_plan([], eps, theta, scale, act)
    with pytest.raises(ValueError, match="layer 1: .*11"):
        _native.bitnet_decode_plan([layers[0], (layers[1][0][:5], layers[1][1])], eps, theta, scale, act)
    with pytest.raises(ValueError, match="act"):
        _native.bitnet_decode_plan(layers, eps, theta, scale, 7)
    with pytest.raises(ValueError, match="layout"):
        _native.bitnet_decode_plan(layers, eps, theta, scale, act, "q4")
    with pytest.raises(ValueError, match="head"):
        _native.bitnet_decode_plan(layers, eps, theta, scale, act, "i2", (w.norm, w.lm_head_q))
    with pytest.raises(ValueError):                             # head of the wrong width
        _native.bitnet_decode_plan(layers, eps, theta, scale, act, "i2",
                                   (w.norm, w.lm_head_q[:, :-1], w.lm_head_s))
    with pytest.raises(TypeError, match="plan"):
        _native.bitnet_decode_token(object(), x, c.k, c.v, 0)
    with pytest.raises(ValueError, match="kcs holds"):
        _native.bitnet_decode_token(plan, x, c.k[:-1], c.v, 0)
    with pytest.raises(ValueError, match="layer 0: pos"):
        _native.bitnet_decode_token(plan, x, c.k, c.v, c.max_len)
    with pytest.raises(TypeError):
        _native.bitnet_decode_token(plan, x.astype(np.float64), c.k, c.v, 0)
    with pytest.raises(ValueError):                             # logits of the wrong width
        _native.bitnet_decode_token(plan, x, c.k, c.v, 0, None, None, out[:, :-1])
    with pytest.raises(ValueError, match="share memory"):       # logits over the head's weights
        _native.bitnet_decode_token(plan, x, c.k, c.v, 0, None, None, w.lm_head_s[None])
    with pytest.raises(ValueError, match="share memory"):       # x inside a cache
        _native.bitnet_decode_token(plan, c.k[1].reshape(-1)[:cfg.dim], c.k, c.v, 0)
    plain = _native.bitnet_decode_plan(layers, eps, theta, scale, act)
    with pytest.raises(ValueError, match="no head"):
        _native.bitnet_decode_token(plain, x, c.k, c.v, 0, None, None, out)
    with pytest.raises(ValueError, match="both"):
        _native.bitnet_decode_token(plan, x, c.k, c.v, 0, c.k, None)
    with pytest.raises(ValueError, match="NaN"):
        _native.bitnet_decode_token(plan, np.full_like(x, np.nan), c.k, c.v, 0)
