"""What the recurrent families (Mamba, Mamba-2, RWKV) share: the state cache with snapshots,
float32 / int8 linears, and the model class that runs a prompt in chunks.

A recurrent model carries a fixed-size state per layer instead of a KV cache: after token t the
state summarises tokens 0..t, and the next token needs only it. Memory is therefore constant in
the context length, but, unlike a KV cache, a state cannot be cut back to an earlier position.
``RecurrentCache`` keeps copies of the state (snapshots) at chunk boundaries and just before the
last token of every prompt, so a prompt that shares a prefix with what ran before restarts from
the latest snapshot inside the shared prefix (the recurrent analogue of the KV prefix cache):
a cell re-run or a chat turn that extends the previous one runs only its new tokens.

Weights: checkpoints in F32, F16 or BF16 are widened to float32 once at load (exact: every
f16/bf16 value is a float32), and the forward pass computes in float32 as transformers does.
``weights="int8"`` stores each linear as int8 rows with a float scale per row (absmax) and
quantizes activations per token: about a quarter of the weight bytes, not exact
(docs/performance.md has its measured perplexity cost).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ryzjupyter import _native
from ryzjupyter.decoding.generation import LanguageModel, forward_tokens
from ryzjupyter.engine.checkpoint import Checkpoint, CheckpointError
from ryzjupyter.engine.kv_cache import common_prefix
from ryzjupyter.engine.profiling import PROFILER, InstrumentedKernels

K = InstrumentedKernels(_native, {
    "rmsnorm": "norm", "add": "norm", "mul": "norm", "silu": "norm",
    "matmul_f32": "matmul", "matmul_i8": "matmul", "quantize_rows_i8": "matmul",
    "mamba_conv1d": "conv", "mamba_scan": "scan", "rwkv4_wkv": "scan", "rwkv7_wkv": "scan", "relu2": "norm",
})

WEIGHT_FORMATS = ("f32", "int8")
FLOAT_DTYPES = ("F32", "F16", "BF16")


# ----------------------------------------------------------------------------
# linears

class Linear:
    """y = x @ W.T (+ b) for float32 activations [M, K] -> [M, N]; W float32 or int8 rows."""

    def __init__(self, w: np.ndarray, bias=None, fmt="f32"):
        w = np.ascontiguousarray(w, dtype=np.float32)
        self.n, self.k = w.shape
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.fmt = fmt
        if fmt == "f32":
            self.w, self.wq, self.ws = w, None, None
        else:                                   # int8 rows: wq = round(w * ws), ws = 127 / max|row|
            amax = np.max(np.abs(w), axis=1)
            self.ws = np.where(amax > 0, 127.0 / np.maximum(amax, 1e-30), 1.0).astype(np.float32)
            self.wq = np.clip(np.rint(w * self.ws[:, None]), -127, 127).astype(np.int8)
            self.w = None

    @property
    def nbytes(self):
        b = 0 if self.bias is None else self.bias.nbytes
        return b + (self.w.nbytes if self.w is not None else self.wq.nbytes + self.ws.nbytes)

    def __call__(self, out, x, scratch=None):
        """out [M, N] = x [M, K] @ W.T (+ bias)."""
        if self.w is not None:
            K.matmul_f32(out, x, self.w)
        else:
            m = x.shape[0]
            xq = np.empty((m, self.k), np.int8)
            xs = np.empty(m, np.float32)
            K.quantize_rows_i8(xq, xs, x)
            K.matmul_i8(out, xq, xs, self.wq, self.ws)
        if self.bias is not None:
            out += self.bias
        return out


# ----------------------------------------------------------------------------
# the fused decode: a family's one-token step as a program for _native.recurrent_decode

OPS = {n: i + 1 for i, n in enumerate((
    "embed", "gemv", "gemv_i8", "add", "rmsnorm", "layernorm", "conv_step", "scan_step", "wkv_step", "silu",
    "mul", "sigmoid", "relu2", "lerp", "copy", "scale", "head_bcast", "wkv7_step", "tanh", "l2norm", "groupnorm",
    "sub", "mix", "decay7", "bonus7", "fma"))}
_NONE = (0, 0)


class DecodeProgram:
    """Builds the straight-line program of one decode step (recurrent_decode.c): operands are
    weights (numpy arrays, pinned by the plan), scratch slices, state slices or the logits."""

    def __init__(self):
        self.rows, self.floats, self.weights, self._ids, self.scratch_len = [], [], [], {}, 0

    def w(self, arr):
        arr = np.ascontiguousarray(arr)
        if id(arr) not in self._ids:
            self._ids[id(arr)] = len(self.weights)
            self.weights.append(arr)
        return (1, self._ids[id(arr)])

    def scratch(self, n):
        ref = (2, self.scratch_len)
        self.scratch_len += int(n)
        return ref

    @staticmethod
    def at(ref, off):
        """A slice of a scratch / state operand starting `off` floats in."""
        kind, r = ref
        assert kind in (2, 3, 4)
        return (kind, r + int(off))

    @staticmethod
    def state(i, off=0):
        return (3, (int(i) << 32) | int(off))

    LOGITS = (4, 0)

    def op(self, name, operands, dims, f=0.0):
        row = [OPS[name]]
        ops = list(operands) + [_NONE] * (10 - len(operands))
        for kind, ref in ops:
            row += [kind, ref]
        row += list(dims) + [0] * (4 - len(dims))
        self.rows.append(row)
        self.floats.append(f)

    def linear(self, out, x, lin: "Linear"):
        """out = lin(x): the same kernels as Linear.__call__ with one token."""
        if lin.w is not None:
            self.op("gemv", [out, x, self.w(lin.w)], [lin.n, lin.k])
        else:
            self.op("gemv_i8", [out, x, self.w(lin.wq), self.w(lin.ws)], [lin.n, lin.k])
        if lin.bias is not None:
            self.op("add", [out, out, self.w(lin.bias)], [lin.n])

    def plan(self, state_lens, n_logits, vocab):
        prog = np.asarray(self.rows, np.int64).reshape(-1, 25)
        return _native.recurrent_plan(prog, np.asarray(self.floats, np.float32), list(self.weights),
                                      self.scratch_len, [int(n) for n in state_lens], int(n_logits), int(vocab))


# ----------------------------------------------------------------------------
# the state cache

class RecurrentCache:
    """A session's recurrent state, the ids of the tokens it has consumed, and snapshots.

    state: a list of float32 arrays (the family's layout; layer-major), updated in place by the
        forward pass. snapshots: position -> a copy of the state after that many tokens, taken at
        multiples of ``every`` and before the last token of each prompt; at most ``keep`` are
        kept (the least recently used go first), so memory stays (keep + 1) states whatever the
        context length. Counters: snapshots_taken, snapshots_restored, tokens (len)."""

    def __init__(self, fresh_state, max_len, *, every=64, keep=8):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self._fresh = [np.array(a, copy=True) for a in fresh_state]
        self.state = [a.copy() for a in self._fresh]
        self.max_len = int(max_len)
        self.every = int(every)
        self.keep = int(keep)
        self.tokens: list[int] = []
        self.snapshots: OrderedDict[int, list] = OrderedDict()
        self.snapshots_taken = 0
        self.snapshots_restored = 0

    def __len__(self):
        return len(self.tokens)

    @property
    def state_bytes(self):
        return sum(a.nbytes for a in self.state)

    @property
    def nbytes(self):
        """Bytes held: the live state and the snapshots (constant in the context length)."""
        return self.state_bytes * (1 + len(self.snapshots))

    def snapshot(self, force=False):
        """Copy the state at the current position (a later prompt may restart from it).
        force: keep it even past the ``keep`` limit until the next ordinary snapshot (the verify
        pass of speculative decoding needs one at every position it may go back to)."""
        n = len(self.tokens)
        if n == 0 and not force:
            return
        if n in self.snapshots:
            self.snapshots.move_to_end(n)
            return
        self.snapshots[n] = [a.copy() for a in self.state]
        self.snapshots_taken += 1
        while not force and len(self.snapshots) > self.keep:
            self.snapshots.popitem(last=False)

    def _restore(self, n):
        if n == 0:
            src = self._fresh
        else:
            src = self.snapshots[n]
            self.snapshots.move_to_end(n)
            self.snapshots_restored += 1
        for a, b in zip(self.state, src):
            a[...] = b
        del self.tokens[n:]

    def rewind(self):
        """Back to the latest snapshot (or the start): after a pass that stopped half-way."""
        n = max((p for p in self.snapshots if p <= len(self.tokens)), default=0)
        self._restore(n)
        self._drop_after(n)

    def common_prefix(self, token_ids) -> int:
        """Length of the longest common prefix of the consumed tokens and `token_ids`."""
        return common_prefix(self.tokens, token_ids)

    def truncate(self, n):
        """Go back to the state after the first n tokens: possible at n = 0, at the current
        position, and where a snapshot was taken; anywhere else a ValueError."""
        if n < 0:
            raise ValueError(f"cannot truncate to {n} tokens")
        if n >= len(self.tokens):
            return
        if n not in self.snapshots and n != 0:
            raise ValueError(f"a recurrent state cannot go back to position {n}: no snapshot there "
                             f"(snapshots at {sorted(self.snapshots)}); run the tokens again from a new session")
        self._restore(n)
        self._drop_after(n)

    def _drop_after(self, n):
        """Snapshots past position n belong to a token sequence that is gone."""
        for p in [p for p in self.snapshots if p > n]:
            del self.snapshots[p]

    def reuse(self, token_ids, keep_last=1) -> int:
        """Keep the longest usable prefix of `token_ids`: all the cached tokens when they are a
        prefix of it, else the latest snapshot inside the shared prefix (or nothing). At least
        ``keep_last`` tokens are left to run. Returns the number of tokens kept."""
        n = min(self.common_prefix(token_ids), max(0, len(token_ids) - keep_last))
        if n == len(self.tokens):
            return n
        best = max((p for p in self.snapshots if p <= n), default=0)
        self._restore(best)
        self._drop_after(best)
        return best

    def append(self, token_ids):
        if len(self.tokens) + len(token_ids) > self.max_len:
            raise ValueError(f"context overflow: {len(self.tokens)} + {len(token_ids)} tokens > "
                             f"{self.max_len}; start a new session or raise max_context")
        self.tokens.extend(int(t) for t in token_ids)

    def clear(self):
        self.truncate(0)

    def __repr__(self):
        return (f"RecurrentCache({len(self.tokens)}/{self.max_len} tokens, state "
                f"{self.state_bytes / 1024:.1f} KiB, {len(self.snapshots)} snapshots)")


# ----------------------------------------------------------------------------
# the model class the families share

class RecurrentModel(LanguageModel):
    """A loaded recurrent model: ``generate``, ``stream``, ``chat``, ``logits`` and sessions come
    from ``LanguageModel``. A family subclass provides ``_load(ck, fmt)``, ``fresh_state()``,
    ``_run_chunk(tokens, state, want) -> logits`` (want "all", "last" or None) and
    ``_program(DecodeProgram)``: its one-token step for the fused decode and optionally ``_decode_one``."""

    family = ""

    def __init__(self, folder, *, tokenizer=None, max_context=None, prefill_chunk=64, allow_pickle=False,
                 progress=None, name=None, weights="f32", snapshots=8):
        from pathlib import Path
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be 'f32' (exact: the checkpoint's F32/F16/BF16 values) or 'int8' "
                             f"(a quarter of the bytes, not exact), got {weights!r}")
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive integer, got {prefill_chunk!r}")
        if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, int)
                                        or max_context < 1):
            raise ValueError(f"max_context must be a positive integer, got {max_context!r}")
        self.path = Path(folder)
        self.name = name or self.path.name
        self.weight_format = weights
        ck = Checkpoint(self.path, allow_pickle=allow_pickle)
        try:
            self._load(ck, weights, progress)
            ck.check_all_used()
        finally:
            ck.close()
        # no positions: the context is bounded only by what a session agrees to hold
        self.max_context = int(max_context or self.config.max_context)
        self.prefill_chunk = prefill_chunk
        self.n_snapshots = int(snapshots)
        self.tokenizer = tokenizer
        self.tokens_processed = 0
        self.fused_decode = True

    # -- what LanguageModel needs
    def new_cache(self, max_len=None) -> RecurrentCache:
        return RecurrentCache(self.fresh_state(), max_len or self.max_context, every=self.prefill_chunk,
                              keep=self.n_snapshots)

    def forward(self, tokens, cache: RecurrentCache, all_logits=False):
        """Run `tokens` after the cached ones, updating cache.state; float32 logits
        [len(tokens), vocab] (all_logits) or [1, vocab]. A prompt runs in chunks of
        ``prefill_chunk`` tokens aligned to multiples of it (a snapshot at each boundary) and
        its last token alone (a snapshot before it: re-running the prompt reuses all but that
        token); one token runs as one C call (the fused decode) when the family has one."""
        tokens = forward_tokens(tokens, cache, self.vocab_size)
        M, pos0 = tokens.size, len(cache)
        if M == 1 and self.fused_decode:
            try:
                out = self._decode_one(int(tokens[0]), cache.state)
            except BaseException:
                cache.rewind()
                raise
            cache.append(tokens.tolist())
            self.tokens_processed += 1
            return out
        out = np.empty((M if all_logits else 1, self.vocab_size), np.float32)
        first = -pos0 % self.prefill_chunk              # chunk boundaries at multiples of prefill_chunk
        cuts = sorted({0, M, max(M - 1, 0)} | set(range(first or self.prefill_chunk, M, self.prefill_chunk)))
        for a, b in zip(cuts, cuts[1:]):
            want = "all" if all_logits else ("last" if b == M else None)
            try:
                lg = self._run_chunk(tokens[a:b], cache.state, want)
            except BaseException:       # interrupted inside a chunk: the state is half-updated
                cache.rewind()
                raise
            cache.append(tokens[a:b].tolist())
            if all_logits:
                out[a:b] = lg
            elif b == M:
                out[0] = lg[-1]
            if b < M:
                cache.snapshot()
        self.tokens_processed += M
        return out

    def _decode_one(self, token, state):
        """One token through every layer and the head in one C call (recurrent_decode.c)."""
        if getattr(self, "_plan", None) is None:
            p = DecodeProgram()
            self._program(p)
            self._plan = p.plan([a.size for a in self.fresh_state()], self.vocab_size, self.embed.shape[0])
        out = np.empty((1, self.vocab_size), np.float32)
        with PROFILER.phase("layers"):
            _native.recurrent_decode(self._plan, token, state, out[0])
        return out

    # -- the verify passes of speculative decoding (draft=) are LanguageModel's, one token at a
    # time; they call this where rejected draft tokens may later be taken back to (cache.truncate)
    def _keep_position(self, cache):
        """A state cannot go back: keep a snapshot at the current position, past the ``keep``
        limit until the next ordinary snapshot."""
        cache.snapshot(force=True)

    def _final(self, h, want):
        """Final norm and head on the rows of h that are wanted ("all", "last", None)."""
        if want is None:
            return None
        rows = h if want == "all" else h[-1:]
        with PROFILER.phase("lm_head"):
            x = self._final_norm(rows)
            out = np.empty((rows.shape[0], self.vocab_size), np.float32)
            self.lm_head(out, x)
        return out

    @property
    def nbytes(self):
        return int(self._nbytes())

    def state_bytes(self):
        return int(sum(a.nbytes for a in self.fresh_state()))

    def close(self):
        pass


def check_float(ck: Checkpoint, name, shape, what=""):
    """A float tensor of `shape` in F32/F16/BF16, as float32."""
    ck.require(name, shape, FLOAT_DTYPES, what=what)
    return np.array(ck.f32(name), dtype=np.float32, copy=True)


def config_int(cfg, key, default=None, *, family, low=1):
    v = cfg.get(key, default)
    if v is None:
        raise CheckpointError(f"config.json of this {family} model has no {key!r}; it is not a complete "
                              f"{family} config")
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise CheckpointError(f"config.json: {key} must be an integer >= {low}, got {v!r}")
    return v
