"""Ternary (BitNet b1.58) weights: converters and the linear layer over the C kernels.

A :class:`TernaryWeight` holds the trits of an [N, K] matrix packed for the C kernels
(layout "i2", or "tl" where the lookup-table kernel is measured to be faster, or "t5",
5 trits a byte, on request: it streams 20 % fewer bytes in decode, see
docs/kernels.md "Layout T5") plus the
float multiplier ``w_mult``: ``linear(x)`` returns ``x_q @ trits.T / s_x * w_mult``, with
x quantized per row exactly as BitNet does (int8 absmax, see ``quantize_rows_i8``).

Converters (numpy, exact):
  * :func:`trits_from_bitnet_packed`: the uint8 format of transformers' BitLinear /
    bitnet-b1.58-2B-4T (``packed[r, c]`` bits 2i..2i+1 hold ``W[i*R + r, c] + 1``,
    R = out_features / 4).
  * :func:`absmean_quantize`: float latent weights -> (trits, w_mult) exactly as
    transformers' WeightQuant computes it in float32.
"""
from __future__ import annotations

import time
import weakref

import numpy as np

from ryzjupyter import _native
from ryzjupyter.engine.profiling import PROFILER

__all__ = ["TernaryWeight", "trits_from_bitnet_packed", "bitnet_packed_from_trits",
           "absmean_quantize", "LAYOUTS"]

LAYOUTS = ("i2", "tl", "t5")
# layouts choose_layout measures. T5 is only chosen explicitly: it wins where decode streams
# the weights from DRAM, which a short measurement on a cache-resident slice cannot see.
MEASURED_LAYOUTS = ("i2", "tl")


# ---- converters ---------------------------------------------------------------------------

def trits_from_bitnet_packed(packed: np.ndarray) -> np.ndarray:
    """uint8 [R, K] (transformers BitLinear / 2B-4T) -> int8 trits [4R, K].

    ``W[i*R + r, c] = ((packed[r, c] >> 2i) & 3) - 1`` (transformers' unpack_weights).
    A 2-bit field equal to 3 is not a ternary value and raises ValueError."""
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.ndim != 2:
        raise TypeError(f"packed must be a 2-D uint8 array, got {p.dtype} with {p.ndim} dims")
    fields = np.stack([(p >> (2 * i)) & 3 for i in range(4)])  # [4, R, K]
    if np.any(fields == 3):
        raise ValueError("packed holds a 2-bit field equal to 3, which is not a ternary code "
                         "(is this really a BitNet packed weight?)")
    return (fields.astype(np.int8) - 1).reshape(4 * p.shape[0], p.shape[1])


def bitnet_packed_from_trits(trits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`trits_from_bitnet_packed` (transformers' pack_weights); N % 4 == 0."""
    t = _check_trits(trits)
    N, K = t.shape
    if N % 4:
        raise ValueError(f"the BitNet packed format needs out_features divisible by 4, got {N}")
    codes = (t + 1).astype(np.uint8).reshape(4, N // 4, K)
    return (codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)).astype(np.uint8)


def absmean_quantize(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Float latent weights -> (trits int8, w_mult) as transformers' WeightQuant does it:
    ``s = 1 / clamp(mean|W|, 1e-5)``, ``t = clamp(round(W * s), -1, 1)``, all in float32,
    round half to even (torch.round); the effective weight is ``t / s`` and
    ``w_mult = float32(1 / s)``. The mean is the correctly rounded float32 of the exact
    mean (torch's float32 reduction agrees with it except possibly in the last bit)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [out, in], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("w contains NaN or inf")
    mean = np.float32(np.mean(np.abs(w), dtype=np.float64)) if w.size else np.float32(0)
    s = np.float32(1.0) / np.maximum(mean, np.float32(1e-5))
    t = np.clip(np.rint(w * s), -1, 1).astype(np.int8)
    return t, float(np.float32(1.0) / s)


def _check_trits(trits) -> np.ndarray:
    t = np.asarray(trits)
    if t.ndim != 2:
        raise ValueError(f"trits must be 2-D [N, K], got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer) and not np.issubdtype(t.dtype, np.floating):
        raise TypeError(f"trits must be numeric, got {t.dtype}")
    if t.size and (t.min() < -1 or t.max() > 1 or
                   (not np.issubdtype(t.dtype, np.integer) and not np.array_equal(t, np.rint(t)))):
        raise ValueError("trits must hold only -1, 0 and +1")  # integers in [-1, 1] need no rint check
    return np.ascontiguousarray(t, dtype=np.int8)


# ---- packed weight memory: an arena of huge-page-backed chunks -----------------------------

class _Arena:
    """Packed weights are carved from 64 MiB numpy chunks instead of one array each.

    Decode streams every weight from DRAM once per token, and with 4 KiB pages the
    hardware prefetchers stop at every page boundary: measured on the project machine,
    2560x2560 GEMVs over separate 1.6 MB arrays ran at ~10 GB/s, the same matrices in one
    huge-page-backed block at ~18 GB/s (1 thread). numpy asks the kernel for transparent
    huge pages (madvise) on allocations of 4 MB and more, so large chunks get 2 MiB pages
    even where THP is in "madvise" mode. A chunk lives as long as any weight carved from it
    (the weights are views; the arena itself only holds a weak reference), which suits
    model weights: loaded together, freed together."""

    CHUNK = 64 << 20
    ALIGN = 4096
    MIN_BYTES = 256 << 10  # smaller weights get their own array

    def __init__(self):
        self._ref = None  # weak: a chunk no weight uses any more is freed
        self._off = 0     # aligned start of the chunk inside its buffer
        self._used = 0

    def empty(self, shape, dtype=np.uint8) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes < self.MIN_BYTES:
            return np.empty(shape, dtype)
        if nbytes > self.CHUNK // 2:
            raw, off = self._aligned(nbytes)
            return raw[off:off + nbytes].view(dtype).reshape(shape)
        raw = self._ref() if self._ref is not None else None
        if raw is None or self._used + nbytes > self.CHUNK:
            raw, self._off = self._aligned(self.CHUNK)
            self._ref = weakref.ref(raw)
            self._used = 0
        start = self._off + self._used
        self._used += -(-nbytes // self.ALIGN) * self.ALIGN
        return raw[start:start + nbytes].view(dtype).reshape(shape)

    def new_chunk(self) -> None:
        """Start the next weight on a fresh chunk (e.g. for a new model, so that two
        models never share a chunk and unloading one frees all of its memory)."""
        self._ref = None

    @staticmethod
    def _aligned(nbytes: int):
        raw = np.empty(nbytes + (2 << 20), np.uint8)
        return raw, (-raw.ctypes.data) % (2 << 20)  # start on a 2 MiB boundary


_ARENA = _Arena()


def packed_empty(N: int, row_bytes: int) -> np.ndarray:
    """An uninitialised uint8 [N, row_bytes] array for packed weights, from the arena."""
    return _ARENA.empty((N, row_bytes), np.uint8)


def new_arena_chunk() -> None:
    """Place the next packed weights on a fresh arena chunk. Call it before loading a
    model: a chunk is freed when no weight carved from it is alive, so models that never
    share a chunk release all of their memory when unloaded (otherwise up to one 64 MiB
    chunk can stay alive with the other model)."""
    _ARENA.new_chunk()


# ---- layout choice: measured, cached ---------------------------------------------------------

_CHOICE: dict = {}


def choose_layout(N: int, K: int) -> str:
    """The faster layout for an [N, K] weight on this machine's selected ISA and thread
    count, measured once per (isa, threads, N, K) on random data. A weight serves decode
    (M = 1) and prefill (M > 1), so the cost compared is the time of one decode call plus
    the per-token time of a 16-token prefill call."""
    key = (_native.info()["isa"], _native.get_num_threads(), N, K)
    if key not in _CHOICE:
        _CHOICE[key] = _measure(N, K)
    return _CHOICE[key]


def _measure(N: int, K: int) -> str:
    if N == 0 or K == 0:
        return "i2"
    rng = np.random.default_rng(0)
    n = min(N, 1024)  # time on a slice of rows: the per-row cost is what differs
    t = rng.integers(-1, 2, (n, K), dtype=np.int8)
    cost = {}
    for lay in MEASURED_LAYOUTS:
        packed = np.empty((n, getattr(_native, f"{lay}_row_bytes")(K)), np.uint8)
        getattr(_native, f"pack_{lay}")(packed, t)
        fn = getattr(_native, f"ternary_linear_{lay}")
        cost[lay] = 0.0
        for M in (1, 16):
            x = rng.standard_normal((M, K)).astype(np.float32)
            out = np.empty((M, n), np.float32)
            fn(out, packed, x, 1.0)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn(out, packed, x, 1.0)
                times.append(time.perf_counter() - t0)
            cost[lay] += min(times) / M
    return min(MEASURED_LAYOUTS, key=lambda lay: cost[lay])


# ---- the weight --------------------------------------------------------------------------

class TernaryWeight:
    """An [N, K] ternary matrix times a float multiplier, packed for the C kernels.

    ``linear(x)`` computes ``out[m, n] = float(sum_k t[n, k] q[m, k]) / s_x[m] * w_mult``
    where ``q, s_x`` are BitNet's per-row int8 quantization of x; the integer sum is exact.
    """

    def __init__(self, trits: np.ndarray, w_mult: float, layout: str | None = None):
        t = _check_trits(trits)
        w_mult = float(w_mult)
        if not np.isfinite(w_mult):
            raise ValueError(f"w_mult must be finite, got {w_mult}")
        self.shape = t.shape
        self.w_mult = w_mult
        N, K = t.shape
        if layout is None:
            layout = choose_layout(N, K)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self._packed = {}
        self._trits_src = None
        self._pack(t, layout)
        self.layout = layout

    def repack(self, layout: str) -> None:
        """Store the same trits in another layout (exact; the old packing is dropped)."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == self.layout:
            return
        t = self.trits()
        self._packed.clear()
        self._pack(t, layout)
        self.layout = layout

    def _pack(self, t: np.ndarray, layout: str) -> None:
        N, K = t.shape
        packed = packed_empty(N, getattr(_native, f"{layout}_row_bytes")(K))
        getattr(_native, f"pack_{layout}")(packed, t)
        self._packed[layout] = packed

    # constructors
    @classmethod
    def from_trits(cls, trits: np.ndarray, w_mult: float = 1.0, layout: str | None = None):
        return cls(trits, w_mult, layout)

    @classmethod
    def from_bitnet_packed(cls, packed_u8: np.ndarray, w_mult: float, layout: str | None = None):
        """From transformers' / 2B-4T's packed uint8 [N/4, K]. ``w_mult`` multiplies the
        integer sums: pass ``1 / weight_scale`` for ``linear_class: bitlinear`` checkpoints
        and ``weight_scale`` for ``autobitlinear`` (see checkpoint-formats.md 1.3)."""
        return cls(trits_from_bitnet_packed(packed_u8), w_mult, layout)

    @classmethod
    def from_float(cls, w: np.ndarray, layout: str | None = None):
        """Absmean-quantize float latent weights (:func:`absmean_quantize`)."""
        t, w_mult = absmean_quantize(w)
        return cls(t, w_mult, layout)

    # properties
    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._packed.values())

    @property
    def packed(self) -> np.ndarray:
        return self._packed[self.layout]

    def trits(self) -> np.ndarray:
        t = np.empty(self.shape, np.int8)
        getattr(_native, f"unpack_{self.layout}")(t, self.packed)
        return t

    def __repr__(self) -> str:
        return (f"TernaryWeight(shape={self.shape}, layout={self.layout!r}, "
                f"w_mult={self.w_mult:.6g}, nbytes={self.nbytes})")

    # compute
    def linear(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x float32 [K] or [M, K] -> float32 [N] or [M, N]."""
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise TypeError(f"x must be float32, got {x.dtype}")
        squeeze = x.ndim == 1
        x2 = np.ascontiguousarray(x.reshape(1, -1) if squeeze else x)
        if x2.ndim != 2 or x2.shape[1] != self.shape[1]:
            raise ValueError(f"x must have shape [{self.shape[1]}] or [M, {self.shape[1]}], "
                             f"got {x.shape}")
        M, N = x2.shape[0], self.shape[0]
        if out is None:
            out2 = np.empty((M, N), np.float32)
            result = out2
        else:
            want = (N,) if squeeze else (M, N)
            if out.shape != want or out.dtype != np.float32 or not out.flags.c_contiguous:
                raise ValueError(f"out must be a C-contiguous float32 array of shape {want}, "
                                 f"got {out.dtype} {out.shape}")
            out2 = out.reshape(M, N)
            result = out
        t = PROFILER.tic()
        getattr(_native, f"ternary_linear_{self.layout}")(out2, self.packed, x2, self.w_mult)
        PROFILER.toc("matmul", t)
        return result[0] if (squeeze and out is None) else result
