"""Fused decode for BitNet b1.58: one C call per token (``_native.bitnet_decode_token``).

``bitnet.BitNetModel.forward`` runs ~20 native calls per layer and token from Python; for a
single token (decode) that glue is a few percent of a step. :func:`forward_one` runs every layer
in C (per layer: rmsnorm, q/k/v GEMV as one thread-pool job, rope, attention, sub-norm, o_proj,
residual, norm, gate/up as one job, relu^2 * up, sub-norm, down, residual) and, for the int8
lm_head, the final norm and the head GEMV too, in ONE call: the weights are checked once per
model (``_native.bitnet_decode_plan``, kept on the model), so no argument parsing or Python sits
between two layers. The int4 head (``lm_head_i4``) and a float head run from Python after the
layers. The logits are bitwise the same as ``forward``'s (tests/perf/test_fused.py checks every
fixture and every ISA level); ``_native.bitnet_decode_layer`` runs one layer alone.

Hook (the engine calls it for one-token passes)::

    if M == 1 and self.fused_decode and bitnet_decode.supported(self, cache):
        return bitnet_decode.forward_one(self, tokens, cache)

``supported`` needs every ternary weight in the I2 layout, or every one in the T5 layout
(5 trits a byte, ``TernaryWeight.repack("t5")``); ``ensure_i2`` repacks any other mix to I2
once (on AVX-512 machines the layout chooser picks I2 anyway).
"""
from __future__ import annotations

import numpy as np

from ryzjupyter import _native as K
from ryzjupyter.decoding.tree import parents_of
from ryzjupyter.engine.kv_cache import KV_FORMATS
from ryzjupyter.engine.profiling import PROFILER

# a layer's weights (bitnet.LayerWeights fields) in the order bitnet_decode_plan takes them;
# the "w*" ones are the seven ternary linears
_NAMES = ("attn_norm", "wq", "wk", "wv", "attn_sub_norm", "wo", "ffn_norm", "w_gate", "w_up",
          "ffn_sub_norm", "w_down")
_LINEARS = tuple(n for n in _NAMES if n.startswith("w"))


def _plan(model):
    """Per-layer argument tuples (layers, eps, theta, scale, act), built once per model (kept on
    the model with the checked native plan of the same weights, ``model._fused_native``)."""
    plan = getattr(model, "_fused_plan", None)
    if plan is not None:
        return plan
    layers = []
    for lw in model.weights.layers:
        ws = tuple(getattr(lw, n).packed if n in _LINEARS else getattr(lw, n) for n in _NAMES)
        mults = tuple(float(getattr(lw, n).w_mult) for n in _LINEARS)
        layers.append((ws, mults))
    cfg, w = model.config, model.weights
    plan = (layers, float(cfg.norm_eps), float(cfg.rope_theta), float(cfg.head_dim ** -0.5),
            0 if cfg.act == "relu2" else 1)
    layout = "t5" if _layouts(model) == {"t5"} else "i2"
    head = (w.norm, w.lm_head_q, w.lm_head_s) if w.lm_head_q is not None else None
    model._fused_native = K.bitnet_decode_plan(layers, *plan[1:], layout, head)
    model._fused_head = head is not None
    model._fused_layout = layout
    model._fused_plan = plan
    return plan


def _layouts(model) -> set:
    return {getattr(getattr(lw, n), "layout", None) for lw in model.weights.layers for n in _LINEARS}


def supported(model, cache=None) -> bool:
    """True when every linear is a ternary I2 weight, or every one a T5 weight (not the float
    variant), and the KV cache (if given) is of a known format (float32, float16, bfloat16 or int8:
    the native calls tell them apart by the arrays' dtypes)."""
    if cache is not None and getattr(cache, "dtype", "f32") not in KV_FORMATS:
        return False
    ok = getattr(model, "_fused_ok", None)
    if ok is None:
        ok = _layouts(model) in ({"i2"}, {"t5"})
        model._fused_ok = ok
    return ok


def ensure_i2(model) -> bool:
    """Repack ternary weights the fused layer cannot use (TL, or a mix of layouts) to I2 (same
    trits); a model whose linears are all T5 stays T5. False for float linears."""
    lays = _layouts(model)
    if None in lays:
        return False
    if lays != {"t5"}:
        model.repack_linears("i2")
    model._fused_ok = model._fused_plan = model._fused_native = None   # layouts may have changed by hand
    return supported(model)


def forward_one(model, tokens, cache):
    """model.forward(tokens, cache) for exactly one token, through the fused layer call.
    Returns float32 logits [1, vocab]; appends the token to the cache."""
    cfg, w, s = model.config, model.weights, model.state
    tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
    i8 = getattr(cache, "dtype", "f32") == "int8"
    if tokens.size != 1:
        raise ValueError("forward_one takes exactly one token")
    pos = len(cache)
    if pos + 1 > cache.max_len:
        raise ValueError(f"{pos} cached + 1 new token exceed the context of {cache.max_len}")
    tok = int(tokens[0])
    if not 0 <= tok < cfg.vocab_size:
        raise ValueError(f"token ids must be in 0..{cfg.vocab_size - 1}")
    _plan(model)
    w.embed(s.x[:1], tokens)
    x = s.x[0]
    ks, vs = (cache.ks, cache.vs) if i8 else (None, None)     # None: float32 / 16-bit cache
    out = np.empty((1, cfg.vocab_size), np.float32)
    if model._fused_head:                             # layers, final norm and int8 head: one call
        layers_s, head_s = K.bitnet_decode_token(model._fused_native, x, cache.k, cache.v, pos, ks, vs, out)
    else:
        layers_s, head_s = K.bitnet_decode_token(model._fused_native, x, cache.k, cache.v, pos, ks, vs)
        t = PROFILER.tic()
        xb = s.xb[:1]
        K.rmsnorm(xb, s.x[:1], w.norm, cfg.norm_eps)
        if w.lm_head_p4 is not None:                  # int4 head (head4.h): same call as forward's
            xq, xs = s.xq[:1], s.xs[:1]
            K.quantize_rows_i8(xq, xs, xb)
            K.lm_head_i4(out, xq, xs, w.lm_head_p4, w.lm_head_s4)
        else:                                         # f32 head (forward_one: model._classifier)
            K.matmul_f32(out, xb, w.lm_head_f32)
        PROFILER.toc("lm_head", t)
    PROFILER.add("layers", int(layers_s * 1e9))       # measured in C: argument checks count as python
    if head_s:
        PROFILER.add("lm_head", int(head_s * 1e9))
    cache.append([tok])
    model.tokens_processed += 1
    return out


def forward_batch(model, tokens, caches):
    """One token for each of B sequences (``tokens[m]`` goes to ``caches[m]``, at position
    ``len(caches[m])``) through ONE ``_native.bitnet_decode_batch`` call: every linear runs as
    a GEMM over the B tokens, attention per stream over its own cache. Returns float32 logits
    [B, vocab]; appends each token to its cache. Row m is bitwise ``forward_one(model,
    [tokens[m]], caches[m])`` (tests/serve/test_forward_batch.py checks it)."""
    cfg, w = model.config, model.weights
    tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
    B = tokens.size
    if B == 0 or B != len(caches):
        raise ValueError(f"forward_batch needs one token per cache, got {B} tokens for {len(caches)} caches")
    if len({id(c) for c in caches}) != B:
        raise ValueError("forward_batch: a cache appears twice; each stream needs a cache of its own")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must be in 0..{cfg.vocab_size - 1}")
    kinds = {getattr(c, "dtype", "f32") for c in caches}
    if len(kinds) != 1:
        raise ValueError(f"forward_batch: every cache must be of the same format, got {sorted(kinds)}")
    pos = np.array([len(c) for c in caches], np.int64)
    for m, c in enumerate(caches):
        if pos[m] + 1 > c.max_len:
            raise ValueError(f"stream {m}: {pos[m]} cached + 1 new token exceed the context of {c.max_len}")
    _plan(model)
    x = np.empty((B, cfg.dim), np.float32)
    w.embed(x, tokens)
    i8 = kinds == {"int8"}
    entries = [(c.k, c.v, c.ks, c.vs) if i8 else (c.k, c.v) for c in caches]
    out = np.empty((B, cfg.vocab_size), np.float32)
    if model._fused_head:                             # layers, final norms and int8 head: one call
        layers_s, head_s = K.bitnet_decode_batch(model._fused_native, x, entries, pos, out)
    else:
        layers_s, head_s = K.bitnet_decode_batch(model._fused_native, x, entries, pos)
        # forward_one's head on B rows at once: row kernels, and the f32 / int4 heads accumulate
        # each logit in the same order whatever the number of rows (bitwise the one-row result)
        t = PROFILER.tic()
        xb = np.empty_like(x)
        K.rmsnorm(xb, x, w.norm, cfg.norm_eps)
        if w.lm_head_p4 is not None:
            xq, xs = np.empty((B, cfg.dim), np.int8), np.empty(B, np.float32)
            K.quantize_rows_i8(xq, xs, xb)
            K.lm_head_i4(out, xq, xs, w.lm_head_p4, w.lm_head_s4)
        else:                                         # f32 head (forward_one: model._classifier)
            K.matmul_f32(out, xb, w.lm_head_f32)
        PROFILER.toc("lm_head", t)
    PROFILER.add("layers", int(layers_s * 1e9))
    if head_s:
        PROFILER.add("lm_head", int(head_s * 1e9))
    for m, c in enumerate(caches):
        c.append([int(tokens[m])])
    model.tokens_processed += B
    return out


def _engine_has_hook(model) -> bool:
    fwd = type(model).forward
    return "fused_decode" in getattr(fwd, "__code__", None).co_names


def install(model) -> bool:
    """Send the model's one-token forward passes through :func:`forward_one`. With the
    bitnet.py hook this sets ``model.fused_decode = True``; without it, ``forward`` is wrapped
    (an instance attribute). Returns False (and changes nothing) when the model cannot use the
    fused path (float linears)."""
    if not ensure_i2(model):
        return False
    model.fused_decode = True
    if _engine_has_hook(model) or getattr(model, "_fused_installed", False):
        return True
    plain = model.forward

    def forward(tokens, cache, all_logits=False):
        t = np.asarray(tokens).reshape(-1)
        if t.size == 1 and not all_logits and model.fused_decode and supported(model, cache):
            return forward_one(model, t, cache)
        return plain(tokens, cache, all_logits)

    model.forward = forward
    model._fused_installed = True
    return True


def uninstall(model) -> None:
    """One-token passes go through the Python forward pass again."""
    model.fused_decode = False
    if getattr(model, "_fused_installed", False):
        del model.forward
        model._fused_installed = False


# ---- the verify pass of speculative decoding ---------------------------------------------------

def verify(model, tokens, cache, depths=None):
    """Run `tokens` as one batch (``_native.bitnet_verify``): token i at position len(cache) +
    depths[i] (a chain: depths = 0, 1, 2, ...; a tree in depth-first preorder otherwise, see
    ``ryzjupyter.decoding.generation.LanguageModel.verify_tree``). Row i of the float32 logits
    [n, vocab] is bitwise what :func:`forward_one` gives for token i decoded right after its
    ancestors. A chain is appended to the cache; a tree leaves cache.tokens as they were and
    returns ``(logits, commit)``: ``commit(path)`` appends the nodes of a root-to-node path
    (indices into tokens) to the cache, their key/value rows copied from the pass's stash."""
    cfg, w = model.config, model.weights
    tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
    n, pos = tokens.size, len(cache)
    chain = depths is None
    depth = np.arange(n, dtype=np.int32) if chain else np.ascontiguousarray(depths, dtype=np.int32).reshape(-1)
    if n == 0 or depth.size != n:
        raise ValueError(f"verify needs at least one token and one depth per token, got {n} tokens, "
                         f"{depth.size} depths")
    parent = None if chain else parents_of(depth)            # ValueError unless a preorder tree
    if pos + int(depth.max()) + 1 > cache.max_len:
        raise ValueError(f"{pos} cached + {int(depth.max()) + 1} new positions exceed the context of "
                         f"{cache.max_len}")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must be in 0..{cfg.vocab_size - 1}")
    _plan(model)
    i8 = getattr(cache, "dtype", "f32") == "int8"
    x = np.empty((n, cfg.dim), np.float32)
    w.embed(x, tokens)
    ks, vs = (cache.ks, cache.vs) if i8 else (None, None)
    out = np.empty((n, cfg.vocab_size), np.float32)
    stash = None
    if not chain:
        L, KVD = cfg.n_layers, cfg.n_kv_heads * cfg.head_dim
        if i8:
            stash = (np.empty((L, n, KVD), np.int8), np.empty((L, n, KVD), np.int8),
                     np.empty((L, n, cfg.n_kv_heads), np.float32), np.empty((L, n, cfg.n_kv_heads), np.float32))
        else:                                            # the cache's own dtype (f32, f16, bf16 bits)
            dt = KV_FORMATS[getattr(cache, "dtype", "f32")]
            stash = (np.empty((L, n, KVD), dt), np.empty((L, n, KVD), dt))
    if model._fused_head:
        layers_s, head_s = K.bitnet_verify(model._fused_native, x, cache.k, cache.v, pos, depth, ks, vs, out, stash)
    else:
        layers_s, head_s = K.bitnet_verify(model._fused_native, x, cache.k, cache.v, pos, depth, ks, vs, None, stash)
        t = PROFILER.tic()
        xb = np.empty_like(x)
        K.rmsnorm(xb, x, w.norm, cfg.norm_eps)
        if w.lm_head_p4 is not None:                  # int4 head: each row on its own, as decode
            xq, xs = np.empty((n, cfg.dim), np.int8), np.empty(n, np.float32)
            K.quantize_rows_i8(xq, xs, xb)
            for i in range(n):
                K.lm_head_i4(out[i:i + 1], xq[i:i + 1], xs[i:i + 1], w.lm_head_p4, w.lm_head_s4)
        elif w.lm_head_f32 is not None:               # float head: per-row sums in the same order
            K.matmul_f32(out, xb, w.lm_head_f32)
        else:
            raise RuntimeError("the int8 head runs inside the fused call")
        PROFILER.toc("lm_head", t)
    PROFILER.add("layers", int(layers_s * 1e9))
    if head_s:
        PROFILER.add("lm_head", int(head_s * 1e9))
    model.tokens_processed += n
    if chain:
        cache.append(tokens.tolist())
        return out

    def commit(path):
        path = [int(i) for i in path]
        if not path:
            return
        if path[0] != 0 or any(parent[b] != a for a, b in zip(path, path[1:])):
            raise ValueError(f"commit needs a root-to-node path of the verified tree, got {path}")
        if len(cache) != pos:
            raise ValueError("the cache changed since the verify pass; commit the path right after it")
        idx = np.asarray(path)
        m = len(path)
        for l in range(cfg.n_layers):
            cache.k[l][pos:pos + m] = stash[0][l, idx].reshape(m, cfg.n_kv_heads, cfg.head_dim)
            cache.v[l][pos:pos + m] = stash[1][l, idx].reshape(m, cfg.n_kv_heads, cfg.head_dim)
            if i8:
                cache.ks[l][pos:pos + m] = stash[2][l, idx]
                cache.vs[l][pos:pos + m] = stash[3][l, idx]
        cache.append([int(tokens[i]) for i in path])
    return out, commit
