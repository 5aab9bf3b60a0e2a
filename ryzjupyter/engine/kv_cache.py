"""KV cache: per-layer keys and values of the tokens already processed, and those tokens' ids.

    k[l], v[l] : float32 [max_len, n_kv_heads, head_dim], rows 0..n-1 valid
                 (dtype="f16": float16; "bf16": uint16 holding bfloat16 bits (the top half of a
                  float32); both half the memory traffic, rounded to nearest even, not exact; see
                  attention_kv16 / store_kv16.
                  dtype="int8": int8 rows, with ks[l], vs[l] float32 [max_len, n_kv_heads] scales:
                  a quarter of the memory traffic, not exact; see attention_i8kv)
    tokens     : the n token ids whose keys/values are stored, in order

Rows are written by the forward pass at positions pos..pos+M-1. Because position p's keys
depend only on tokens 0..p, any prefix of the cache is valid on its own: a new token sequence
that shares a prefix with `tokens` keeps that prefix (`reuse`) and only the rest is computed.
The arrays are allocated with np.zeros, so untouched rows cost no memory until written.
"""

from __future__ import annotations

import numpy as np

# the formats a KV cache can hold, with the numpy dtype of its k / v rows
KV_FORMATS = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "int8": np.int8}


def check_kv_format(kv_cache) -> str:
    """kv_cache if it names a format, else ValueError listing them."""
    if not isinstance(kv_cache, str) or kv_cache not in KV_FORMATS:
        raise ValueError(f"kv_cache must be 'f32' (exact, default), 'f16' or 'bf16' (half the cache's bytes, "
                         f"rounded) or 'int8' (a quarter, with a scale per row), got {kv_cache!r}")
    return kv_cache


def common_prefix(cached, token_ids) -> int:
    """Length of the longest common prefix of two token id sequences: how many of the `cached`
    ids a cache (a KV cache here, a recurrent state cache in families/recurrent.py) can keep
    when `token_ids` come next."""
    n = min(len(cached), len(token_ids))
    if n == 0:
        return 0
    a = np.asarray(cached[:n], dtype=np.int64)
    b = np.asarray(token_ids[:n], dtype=np.int64)
    diff = np.nonzero(a != b)[0]
    return int(diff[0]) if diff.size else n


class KVCache:
    def __init__(self, n_layers, max_len, n_kv_heads, head_dim, dtype="f32"):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        check_kv_format(dtype)
        self.n_layers, self.max_len = int(n_layers), int(max_len)
        self.n_kv_heads, self.head_dim = int(n_kv_heads), int(head_dim)
        self.dtype = dtype
        shape = (self.max_len, self.n_kv_heads, self.head_dim)
        t = KV_FORMATS[dtype]
        self.k = [np.zeros(shape, t) for _ in range(self.n_layers)]
        self.v = [np.zeros(shape, t) for _ in range(self.n_layers)]
        if dtype == "int8":
            self.ks = [np.zeros(shape[:2], np.float32) for _ in range(self.n_layers)]
            self.vs = [np.zeros(shape[:2], np.float32) for _ in range(self.n_layers)]
        self.tokens: list[int] = []

    def __len__(self):
        return len(self.tokens)

    @property
    def nbytes(self):
        """Bytes in use (the valid rows), not the reserved address space."""
        per_row = {"f32": self.head_dim * 4, "f16": self.head_dim * 2, "bf16": self.head_dim * 2,
                   "int8": self.head_dim + 4}[self.dtype]
        return 2 * self.n_layers * len(self.tokens) * self.n_kv_heads * per_row

    def store(self, l, pos, k, v):
        """Write float32 keys and values k, v [m, n_kv_heads, head_dim] into layer l's rows
        pos..pos+m-1 in the cache's format (rounded to nearest even for f16 / bf16, quantized per
        row for int8: what the forward pass writes). Does not touch `tokens`."""
        from ryzjupyter import _native
        k, v = np.ascontiguousarray(k, np.float32), np.ascontiguousarray(v, np.float32)
        m = k.shape[0]
        kc, vc = self.k[l][pos:pos + m], self.v[l][pos:pos + m]
        if self.dtype == "f32":
            kc[...], vc[...] = k, v
        elif self.dtype == "int8":
            _native.quantize_kv_i8(kc, self.ks[l][pos:pos + m], k)
            _native.quantize_kv_i8(vc, self.vs[l][pos:pos + m], v)
        else:
            _native.store_kv16(kc, k, self.dtype)
            _native.store_kv16(vc, v, self.dtype)

    def common_prefix(self, token_ids) -> int:
        """Length of the longest common prefix of the cached tokens and `token_ids`."""
        return common_prefix(self.tokens, token_ids)

    def truncate(self, n):
        """Forget everything after the first n tokens (their rows are simply overwritten later)."""
        if n < 0:
            raise ValueError(f"cannot truncate to {n} tokens")
        del self.tokens[n:]

    def reuse(self, token_ids, keep_last=1) -> int:
        """Keep the longest cached prefix of `token_ids`, but leave at least `keep_last` tokens to
        run (the model needs at least one new token to produce logits). Returns the number kept."""
        n = self.common_prefix(token_ids)
        n = min(n, max(0, len(token_ids) - keep_last))
        self.truncate(n)
        return n

    def append(self, token_ids):
        """Record ids whose rows the forward pass has just written at positions len(self)..."""
        if len(self.tokens) + len(token_ids) > self.max_len:
            raise ValueError(f"KV cache overflow: {len(self.tokens)} + {len(token_ids)} tokens > "
                             f"{self.max_len}; start a new session or raise max_context")
        self.tokens.extend(int(t) for t in token_ids)

    def clear(self):
        self.tokens.clear()

    def __repr__(self):
        return (f"KVCache({len(self.tokens)}/{self.max_len} tokens, {self.dtype}, {self.n_layers} layers, "
                f"{self.n_kv_heads}x{self.head_dim}, {self.nbytes / 2**20:.1f} MiB used)")
