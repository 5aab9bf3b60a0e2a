"""KV cache: per-layer keys and values of the tokens already processed, and those tokens' ids.

    k[l], v[l] : float32 [max_len, n_kv_heads, head_dim], rows 0..n-1 valid
                 (dtype="int8": int8 rows, with ks[l], vs[l] float32 [max_len, n_kv_heads] scales:
                  a quarter of the memory traffic, not exact; see attention_i8kv)
    tokens     : the n token ids whose keys/values are stored, in order

Rows are written by the forward pass at positions pos..pos+M-1. Because position p's keys
depend only on tokens 0..p, any prefix of the cache is valid on its own: a new token sequence
that shares a prefix with `tokens` keeps that prefix (`reuse`) and only the rest is computed.
The arrays are allocated with np.zeros, so untouched rows cost no memory until written.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, n_layers, max_len, n_kv_heads, head_dim, dtype="f32"):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if dtype not in ("f32", "int8"):
            raise ValueError(f"kv cache dtype must be 'f32' or 'int8', got {dtype!r}")
        self.n_layers, self.max_len = int(n_layers), int(max_len)
        self.n_kv_heads, self.head_dim = int(n_kv_heads), int(head_dim)
        self.dtype = dtype
        shape = (self.max_len, self.n_kv_heads, self.head_dim)
        t = np.float32 if dtype == "f32" else np.int8
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
        per_row = self.head_dim * 4 if self.dtype == "f32" else self.head_dim + 4
        return 2 * self.n_layers * len(self.tokens) * self.n_kv_heads * per_row

    def common_prefix(self, token_ids) -> int:
        """Length of the longest common prefix of the cached tokens and `token_ids`."""
        n = min(len(self.tokens), len(token_ids))
        if n == 0:
            return 0
        a = np.asarray(self.tokens[:n], dtype=np.int64)
        b = np.asarray(token_ids[:n], dtype=np.int64)
        diff = np.nonzero(a != b)[0]
        return int(diff[0]) if diff.size else n

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
