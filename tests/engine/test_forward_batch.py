"""The batched decode step (``BitNetModel.forward_batch``: ``_native.bitnet_decode_batch``, every
linear a GEMM over the streams, attention per stream over its own cache) gives each stream bitwise
the logits and KV cache rows that the one-token decode gives it alone, on every fixture format, every
ISA level, 1 and 2 threads, float32 / int8 caches, f32 / int8 / int4 heads, with streams of different
lengths joining and leaving between steps and past the attention split."""
import json
from pathlib import Path

import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.families import bitnet_decode
from ryzjupyter.families.bitnet import BitNetModel

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "bitnet"
FORMATS = ["packed", "autobitlinear_offline", "online", "onebitllm", "untied", "rope_parameters"]


def _seqs():
    man = json.loads((FIX / "manifest.json").read_text())
    return [[int(t) for t in s] for s in man["sequences"]]


def _same_cache(a, b):
    n = len(a)
    assert len(b) == n and a.tokens == b.tokens
    for l in range(a.n_layers):
        np.testing.assert_array_equal(b.k[l][:n], a.k[l][:n])
        np.testing.assert_array_equal(b.v[l][:n], a.v[l][:n])
        if a.dtype == "int8":
            np.testing.assert_array_equal(b.ks[l][:n], a.ks[l][:n])
            np.testing.assert_array_equal(b.vs[l][:n], a.vs[l][:n])


def _run_schedule(model, prompts, schedule, max_len=None):
    """Streams prefilled with `prompts`; then for each step in `schedule` (the indices of the
    streams that decode one token together) one forward_batch over them, checked against the same
    token through the one-token path on a copy of each stream's cache."""
    ref = [model.new_cache(max_len) for _ in prompts]
    got = [model.new_cache(max_len) for _ in prompts]
    for p, a, b in zip(prompts, ref, got):
        model.forward(p, a)
        model.forward(p, b)
    rng = np.random.default_rng(7)
    for step in schedule:
        toks = rng.integers(0, model.config.vocab_size, len(step))
        out = model.forward_batch(toks, [got[i] for i in step])
        assert out.shape == (len(step), model.config.vocab_size) and out.dtype == np.float32
        for row, (i, t) in enumerate(zip(step, toks)):
            np.testing.assert_array_equal(out[row:row + 1], model.forward([int(t)], ref[i]))
    for a, b in zip(ref, got):
        _same_cache(a, b)


SCHEDULE = [[0, 1, 2], [0, 2], [1], [2, 1, 0], [3, 0], [0, 1, 2, 3], [3]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_equals_one_token_path(fmt, isa, threads):
    if not (FIX / fmt / "config.json").is_file():
        pytest.skip(f"fixture {fmt} missing")
    model = BitNetModel(FIX / fmt, lm_head="int8")
    assert bitnet_decode.ensure_i2(model)
    seqs = _seqs()
    prompts = [seqs[0][:5], seqs[1][:9], seqs[2][:2], seqs[0][:13]]
    _run_schedule(model, prompts, SCHEDULE)


@pytest.mark.parametrize("lm_head,kv", [("f32", "f32"), ("int4", "int8"), ("int8", "int8"), ("f32", "int8"),
                                        ("int8", "f16"), ("f32", "bf16")])
def test_batch_heads_and_int8_cache(lm_head, kv, isa, threads):
    model = BitNetModel(FIX / "packed", lm_head=lm_head, kv_cache=kv)
    assert bitnet_decode.ensure_i2(model)
    seqs = _seqs()
    _run_schedule(model, [seqs[0][:3], seqs[1][:7], seqs[2][:11], seqs[1][:1]], SCHEDULE)


def test_batch_equals_python_forward(isa):
    """Against the Python forward pass (not the fused one-token call): the chain of equalities
    holds end to end."""
    model = BitNetModel(FIX / "packed", lm_head="f32")
    assert bitnet_decode.ensure_i2(model)
    seqs = _seqs()
    seqs = [seqs[0], seqs[1], seqs[0][::-1]]
    caches = [model.new_cache() for _ in range(3)]
    refs = [model.new_cache() for _ in range(3)]
    for s, a, b in zip(seqs, caches, refs):
        model.forward(s[:4], a)
        model.forward(s[:4], b)
    model.fused_decode = False
    try:
        for k in range(4, 8):
            want = [model.forward([s[k]], r) for s, r in zip(seqs, refs)]
            model.fused_decode = True
            got = model.forward_batch([s[k] for s in seqs], caches)
            model.fused_decode = False
            np.testing.assert_array_equal(got, np.concatenate(want))
    finally:
        model.fused_decode = True


def test_batch_t5_layout(isa):
    model = BitNetModel(FIX / "packed", lm_head="int8", ternary_layout="t5")
    assert bitnet_decode.supported(model)
    seqs = _seqs()
    _run_schedule(model, [seqs[0][:3], seqs[1][:6], seqs[2][:4]], [[0, 1, 2], [2, 0], [1, 2]])


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """dim 256, 4 heads / 2 kv heads of 64, ffn 512: enough rows that the GEMMs split between threads."""
    from ryzjupyter.bench import model as bm
    return bm.random_model_folder(bm.SHAPES["tiny"], tmp_path_factory.mktemp("batch"))


def _fill(cache, ctx, seed):
    for l in range(cache.n_layers):
        r = np.random.default_rng(seed * 100 + l)
        cache.k[l][:ctx] = r.standard_normal(cache.k[l][:ctx].shape, dtype=np.float32)
        cache.v[l][:ctx] = r.standard_normal(cache.v[l][:ctx].shape, dtype=np.float32)
    cache.append([1] * ctx)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_batch_long_contexts_split_attention(split_folder, isa, n_threads):
    """Streams at 3, 150, 700 and 1100 cached rows in one step: the long ones split their
    attention into parts (and merge them), the short ones do not; every stream bitwise as alone."""
    previous = _native.get_num_threads()
    _native.set_num_threads(n_threads)
    try:
        model = BitNetModel(split_folder, lm_head="int8")
        assert bitnet_decode.ensure_i2(model)
        ctxs = (3, 150, 700, 1100)
        ref, got = [], []
        for i, ctx in enumerate(ctxs):
            a, b = model.new_cache(1200), model.new_cache(1200)
            _fill(a, ctx, i)
            _fill(b, ctx, i)
            ref.append(a)
            got.append(b)
        for step in ([0, 1, 2, 3], [3, 1], [2, 0, 3]):
            toks = [5 + 11 * i for i in step]
            out = model.forward_batch(toks, [got[i] for i in step])
            for row, (i, t) in enumerate(zip(step, toks)):
                np.testing.assert_array_equal(out[row:row + 1], model.forward([t], ref[i]))
        for a, b in zip(ref, got):
            _same_cache(a, b)
    finally:
        _native.set_num_threads(previous)


def test_batch_of_sixteen_streams(split_folder, threads):
    model = BitNetModel(split_folder, lm_head="int8")
    prompts = [[(7 * i + j) % 1000 + 3 for j in range(1 + i % 5)] for i in range(16)]
    _run_schedule(model, prompts, [list(range(16)), list(range(0, 16, 2)), list(range(15, -1, -1))], max_len=64)


def test_float_linears_fall_back_to_one_stream_at_a_time():
    model = BitNetModel(FIX / "float_noquant")
    assert not bitnet_decode.supported(model)
    seqs = _seqs()
    _run_schedule(model, [seqs[0][:3], seqs[1][:5]], [[0, 1], [1, 0], [0]])


@pytest.mark.parametrize("fused", [True, False])
def test_bad_batches(fused):
    model = BitNetModel(FIX / "packed", lm_head="int8")
    assert model.prepare_batching()
    model.fused_decode = fused
    a, b = model.new_cache(8), model.new_cache(8)
    with pytest.raises(ValueError, match="one token per cache"):
        model.forward_batch([1, 2, 3], [a, b])
    with pytest.raises(ValueError, match="twice"):
        model.forward_batch([1, 2], [a, a])
    with pytest.raises(ValueError, match="token ids"):
        model.forward_batch([1, 10 ** 6], [a, b])
    full = model.new_cache(2)
    model.forward([1, 2], full)
    with pytest.raises(ValueError, match="context"):
        model.forward_batch([1, 2], [a, full])
    assert len(a) == len(b) == 0                          # nothing ran
    if not fused:
        return
    with pytest.raises(ValueError, match="same format"):
        model.forward_batch([1, 2], [a, BitNetModel(FIX / "packed", kv_cache="int8").new_cache(8)])
    assert len(a) == 0
    # the native call itself: aliasing caches, a position past the cache, a wrong x
    bitnet_decode._plan(model)
    plan = model._fused_native
    x = np.zeros((2, model.config.dim), np.float32)
    with pytest.raises(ValueError, match="share cache memory"):
        _native.bitnet_decode_batch(plan, x, [(a.k, a.v), (a.k, a.v)], np.array([0, 1]))
    with pytest.raises(ValueError, match="^stream 1: layer 0: pos is 8 but must be in 0..T-1"):
        _native.bitnet_decode_batch(plan, x, [(a.k, a.v), (b.k, b.v)], np.array([0, 8]))
    with pytest.raises(ValueError, match="len\\(caches\\)"):
        _native.bitnet_decode_batch(plan, x[:1], [(a.k, a.v), (b.k, b.v)], np.array([0, 1]))
    with pytest.raises(ValueError, match="layers"):
        _native.bitnet_decode_batch(plan, x, [(a.k[:1], a.v[:1]), (b.k, b.v)], np.array([0, 1]))
    with pytest.raises(TypeError):
        _native.bitnet_decode_batch(plan, x, [(a.k, a.v), (b.k, b.v)], np.array([0.0, 1.0]))
