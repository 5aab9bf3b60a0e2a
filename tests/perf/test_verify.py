"""The verify pass of speculative decoding (``_native.bitnet_verify`` via BitNetModel.verify /
verify_tree): every row of its logits and every key/value row it leaves in the cache are bitwise
what one-token decode steps give, for a chain and for a tree (node i decoded right after its
ancestors), on every fixture checkpoint and head format, float and int8 caches, every ISA level,
1 and 2 threads, also past the attention split (long context); and the logits agree with the
engine's independent prefill path (``model.logits`` on the path) within float tolerance."""
import json
from pathlib import Path

import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.decoding.generation import LanguageModel
from ryzjupyter.decoding.tree import depths_of, path_to
from ryzjupyter.families import bitnet_decode
from ryzjupyter.families.bitnet import BitNetModel

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "bitnet"
FORMATS = ["packed", "autobitlinear_offline", "online", "onebitllm", "untied", "rope_parameters"]

# a tree of 9 nodes in depth-first preorder: root 0; 1 -> (2 -> 3, 4); 5 -> 6; 7; 8 is a child of 7
TREE_PARENTS = [-1, 0, 1, 2, 1, 0, 5, 0, 7]


def _load(name, **kw):
    return BitNetModel(FIX / name, **kw)


def _seq():
    man = json.loads((FIX / "manifest.json").read_text())
    return [int(t) for t in man["sequences"][0]]


def _decoded(model, prefix_cache_fn, tokens):
    """Logits rows and the cache after decoding `tokens` one by one (the fused decode)."""
    cache = prefix_cache_fn()
    rows = [bitnet_decode.forward_one(model, [t], cache)[0] for t in tokens]
    return np.stack(rows), cache


def _same_cache(a, b, n0, n1):
    for l in range(a.n_layers):
        np.testing.assert_array_equal(a.k[l][n0:n1], b.k[l][n0:n1])
        np.testing.assert_array_equal(a.v[l][n0:n1], b.v[l][n0:n1])
        if a.dtype == "int8":
            np.testing.assert_array_equal(a.ks[l][n0:n1], b.ks[l][n0:n1])
            np.testing.assert_array_equal(a.vs[l][n0:n1], b.vs[l][n0:n1])


def _check_model(model, prefix, chain, fill=None, max_len=None):
    assert bitnet_decode.ensure_i2(model)

    def prefixed():
        c = model.new_cache(max_len)
        if fill:
            _fill_random((c,), fill)
        if prefix:
            model.forward(prefix, c)
        return c

    # chain: the verify rows and cache equal step-by-step decoding
    ref, rc = _decoded(model, prefixed, chain)
    c = prefixed()
    pos = len(c)
    got = model.verify(chain, c)
    np.testing.assert_array_equal(got, ref)
    assert c.tokens == rc.tokens
    _same_cache(c, rc, pos, len(c))

    # tree: each node's row equals decoding its path; a committed path leaves the decode cache
    toks = [chain[i % len(chain)] for i in range(len(TREE_PARENTS))]
    depths = depths_of(TREE_PARENTS)
    c = prefixed()
    logits, commit = model.verify_tree(toks, depths, c)
    assert len(c) == pos
    for node in range(len(toks)):
        path = path_to(TREE_PARENTS, node)
        ref, rc = _decoded(model, prefixed, [toks[i] for i in path])
        np.testing.assert_array_equal(logits[node], ref[-1], err_msg=f"node {node}")
    path = path_to(TREE_PARENTS, 3)
    commit(path)
    ref, rc = _decoded(model, prefixed, [toks[i] for i in path])
    assert c.tokens == rc.tokens
    _same_cache(c, rc, pos, len(c))
    # and the cache goes on like a decode cache
    np.testing.assert_array_equal(bitnet_decode.forward_one(model, [chain[0]], c),
                                  bitnet_decode.forward_one(model, [chain[0]], rc))
    return logits


def _fill_random(caches, ctx):
    for c in caches:
        for l in range(c.n_layers):
            r = np.random.default_rng(l)
            if c.dtype == "int8":
                c.k[l][:ctx] = r.integers(-127, 128, c.k[l][:ctx].shape, dtype=np.int8)
                c.v[l][:ctx] = r.integers(-127, 128, c.v[l][:ctx].shape, dtype=np.int8)
                c.ks[l][:ctx] = 0.01
                c.vs[l][:ctx] = 0.01
            else:
                shape = c.k[l][:ctx].shape
                c.store(l, 0, r.standard_normal(shape, dtype=np.float32), r.standard_normal(shape, dtype=np.float32))
        c.append([1] * ctx)


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_equals_decode(fmt, isa, threads):
    if not (FIX / fmt / "config.json").is_file():
        pytest.skip(f"fixture {fmt} missing")
    seq = _seq()
    _check_model(_load(fmt, lm_head="f32"), seq[:3], seq[3:9])


@pytest.mark.parametrize("head,kv", [("int8", "f32"), ("int8", "int8"), ("int4", "f32"), ("f32", "int8"),
                                     ("int8", "f16"), ("f32", "bf16")])
def test_verify_heads_and_int8_cache(head, kv, isa, threads):
    seq = _seq()
    _check_model(_load("packed", lm_head=head, kv_cache=kv), seq[:4], seq[4:9])


@pytest.mark.parametrize("kv", ["f32", "int8", "f16", "bf16"])
def test_verify_long_context(kv, isa):
    """Past RYZ_ATTN_MIN_PART_ROWS cached rows every node's attention is split into parts (merged
    afterwards), node by node as its decode step would; 300 rows at depth 0 and deeper nodes cross
    a split boundary of their own."""
    seq = _seq()
    _check_model(_load("packed", lm_head="int8", kv_cache=kv), [], seq[:6], fill=1020, max_len=1040)


def test_verify_agrees_with_prefill_path(isa):
    """An independent computation: the prefill path (bitnet.forward over the whole sequence, its
    own attention kernels) gives the same logits for each tree node's path within float error."""
    seq = _seq()
    model = _load("packed", lm_head="f32")
    prefix, chain = seq[:3], seq[3:9]
    logits = _check_model(model, prefix, chain)
    toks = [chain[i % len(chain)] for i in range(len(TREE_PARENTS))]
    for node in range(len(toks)):
        path = [toks[i] for i in path_to(TREE_PARENTS, node)]
        ref = LanguageModel.logits(model, prefix + path)[-1]
        np.testing.assert_allclose(logits[node], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_generic_verify_is_the_decode_step():
    """The LanguageModel defaults (used by families without a batched pass) are exact too."""
    seq = _seq()
    model = _load("packed", lm_head="f32")
    c1, c2 = model.new_cache(), model.new_cache()
    model.forward(seq[:3], c1)
    model.forward(seq[:3], c2)
    np.testing.assert_array_equal(LanguageModel.verify(model, seq[3:7], c1), model.verify(seq[3:7], c2))
    toks = [seq[i % 9] for i in range(len(TREE_PARENTS))]
    depths = depths_of(TREE_PARENTS)
    a, commit_a = LanguageModel.verify_tree(model, toks, depths, c1)
    b, commit_b = model.verify_tree(toks, depths, c2)
    np.testing.assert_array_equal(a, b)
    commit_a([0, 5, 6])
    commit_b([0, 5, 6])
    assert c1.tokens == c2.tokens
    _same_cache(c1, c2, 0, len(c1))


def test_verify_refuses_bad_trees():
    model = _load("packed", lm_head="int8")
    assert bitnet_decode.ensure_i2(model)
    c = model.new_cache(16)
    model.forward([1, 2], c)
    with pytest.raises(ValueError, match="preorder"):
        model.verify_tree([3, 4, 5], [0, 2, 1], c)
    with pytest.raises(ValueError, match="root"):
        model.verify_tree([3, 4], [1, 2], c)
    with pytest.raises(ValueError, match="context"):
        model.verify(list(range(3, 20)), c)
    logits, commit = model.verify_tree([3, 4, 5], [0, 1, 1], c)
    with pytest.raises(ValueError, match="path"):
        commit([0, 1, 2])
    assert len(c) == 2
    x = np.zeros((2, model.config.dim), np.float32)
    with pytest.raises(ValueError, match="depth"):
        _native.bitnet_verify(model._fused_native, x, c.k, c.v, 2, np.array([0, 3], np.int32))
    with pytest.raises(ValueError, match="pos"):
        _native.bitnet_verify(model._fused_native, x, c.k, c.v, 15, np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="stash"):
        _native.bitnet_verify(model._fused_native, x, c.k, c.v, 2, np.array([0, 1], np.int32), None, None, None,
                              (np.zeros((1, 2, 3), np.float32),))
