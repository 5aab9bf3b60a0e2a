"""BitNet b1.58 engine: config, weights, state and the forward pass.

Laid out like llama2.c's run.c: Config, Weights and State, then one function per block, then
forward(). Every matrix product and elementwise op runs in the native kernels
(ryzjupyter._native, contract in docs/kernels.md); numpy only allocates, slices and indexes.

Checkpoint formats (reference/checkpoint-formats.md section 1):

    variant        weights in the file                       linear layer at run time
    packed         uint8 ternary 4/byte + weight_scale       ternary x int8 act; / scale (bitlinear)
                                                             or * scale (autobitlinear offline)
    offline_float  float ternary values + weight_scale       same, from the float trits
    online         bf16 latent weights (-bf16 checkpoint)    quantized once at load: per tensor
                                                             s = 1/mean|W|, t = clip(round(W s), -1, 1)
    1bitllm        fp16 latent weights, llama layout          as online; SiLU, sub-norms named
                                                             inner_attn_ln / ffn_layernorm
    float          float weights, no quantization_config     plain float matmul, no act quant
                                                             (what transformers does)

The block (transformers modeling_bitnet.py):

    h = embed[ids]
    per layer:  x = rmsnorm(h) ; q,k,v = Wq x, Wk x, Wv x ; rope(q, k) ; a = attn(q, k, v)
                h = h + Wo rmsnorm(a)                       (attn_sub_norm before o_proj)
                x = rmsnorm(h) ; m = act(Wg x) * (Wu x)      (act = relu^2, or silu)
                h = h + Wd rmsnorm(m)                       (ffn_sub_norm before down_proj)
    logits = rmsnorm(h) @ lm_head^T                        (lm_head float; tied = embed)

where each ternary linear quantizes its input per token to int8 (absmax, round half to even).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ryzjupyter import _native
from ryzjupyter.engine.checkpoint import Checkpoint, CheckpointError, ModelKind, detect_kind, rope_theta, to_f32
from ryzjupyter.decoding.generation import LanguageModel, forward_tokens
from ryzjupyter.engine.kv_cache import KV_FORMATS, KVCache, check_kv_format
from ryzjupyter.engine.profiling import PROFILER, InstrumentedKernels
from ryzjupyter.engine.ternary import LAYOUTS
from ryzjupyter.families import bitnet_decode

# The kernels as the forward pass calls them: each call is booked to a profile phase
# (ryzjupyter/profiling.py; RYZ_PROFILE=0 turns the counting off). Ternary linears book
# themselves to "matmul" (ternary.py); the classifier books its calls to "lm_head".
K = InstrumentedKernels(_native, {
    "rmsnorm": "norm", "add": "norm", "mul": "norm", "relu2": "norm", "silu": "norm",
    "rope_table": "attention", "rope_apply": "attention", "attention": "attention", "quantize_kv_i8": "attention",
    "attention_i8kv": "attention", "matmul_f32": "matmul",
})


# ----------------------------------------------------------------------------
# Config

@dataclass
class Config:
    dim: int                  # hidden_size
    hidden_dim: int           # intermediate_size (FFN width)
    n_layers: int
    n_heads: int
    n_kv_heads: int           # grouped-query attention: query head h reads kv head h // (n_heads // n_kv_heads)
    head_dim: int
    vocab_size: int
    max_seq_len: int          # max_position_embeddings
    norm_eps: float
    rope_theta: float
    act: str                  # "relu2" or "silu"
    tie_embeddings: bool
    kind: ModelKind = field(default_factory=lambda: ModelKind("bitnet"))

    @classmethod
    def from_dict(cls, cfg: dict, kind: ModelKind) -> "Config":
        def need(key, typ=int):
            v = cfg.get(key)
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                    (typ is int and (int(v) != v or v <= 0)):
                raise CheckpointError(f"config.json: {key!r} must be a positive {typ.__name__}, got {v!r}")
            return typ(v)

        dim, n_heads = need("hidden_size"), need("num_attention_heads")
        n_kv = need("num_key_value_heads") if cfg.get("num_key_value_heads") is not None else n_heads
        head_dim = need("head_dim") if cfg.get("head_dim") is not None else dim // n_heads
        if n_heads % n_kv:
            raise CheckpointError(f"config.json: num_attention_heads={n_heads} is not a multiple of "
                                  f"num_key_value_heads={n_kv}")
        if head_dim * n_heads != dim and cfg.get("head_dim") is None:
            raise CheckpointError(f"config.json: hidden_size={dim} is not divisible by num_attention_heads="
                                  f"{n_heads}; set head_dim")
        if head_dim % 2:
            raise CheckpointError(f"head_dim={head_dim} must be even for RoPE")
        onebit = kind.variant == "1bitllm"
        act = str(cfg.get("hidden_act", "silu" if onebit else "relu2")).lower()
        if act not in ("relu2", "silu"):
            raise CheckpointError(f"config.json: hidden_act={act!r} is not supported (BitNet uses 'relu2'; "
                                  "1bitLLM 'silu')")
        if cfg.get("attention_bias"):
            raise CheckpointError("config.json: attention_bias=true is not supported by the BitNet engine")
        qc = cfg.get("quantization_config") or {}
        if isinstance(qc, dict) and qc.get("use_rms_norm"):
            raise CheckpointError("quantization_config.use_rms_norm=true (an RMSNorm inside every BitLinear) "
                                  "is not supported")
        max_pos = cfg.get("max_position_embeddings") or 2048
        if isinstance(max_pos, bool) or not isinstance(max_pos, (int, float)) or not math.isfinite(max_pos) \
                or int(max_pos) != max_pos or max_pos < 1:
            raise CheckpointError(f"config.json: max_position_embeddings must be a positive integer, got "
                                  f"{max_pos!r:.60}")
        tie = cfg.get("tie_word_embeddings", onebit)
        if not isinstance(tie, bool):
            raise CheckpointError(f"config.json: tie_word_embeddings must be true or false, got {tie!r:.60}")
        eps = cfg.get("rms_norm_eps", 1e-5 if not onebit else 1e-6)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise CheckpointError(f"config.json: rms_norm_eps must be a small non-negative number, got {eps!r}")
        return cls(dim=dim, hidden_dim=need("intermediate_size"), n_layers=need("num_hidden_layers"),
                   n_heads=n_heads, n_kv_heads=int(n_kv), head_dim=int(head_dim), vocab_size=need("vocab_size"),
                   max_seq_len=int(max_pos), norm_eps=float(eps),
                   rope_theta=rope_theta(cfg, 10000.0 if onebit else 500000.0), act=act,
                   tie_embeddings=tie, kind=kind)


# ----------------------------------------------------------------------------
# Weights

class FloatLinear:
    """A float weight [N, K] (the unquantized 'float' variant): y = x @ W.T."""

    def __init__(self, w):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        self.shape = self.w.shape
        self.nbytes = self.w.nbytes

    def linear(self, x, out=None):
        if out is None:
            out = np.empty((x.shape[0], self.shape[0]), np.float32)
        K.matmul_f32(out, x, self.w)
        return out


def _absmean_trits(w: np.ndarray):
    """BitNet weight quantization, per tensor, in float32 (transformers AutoBitLinear online /
    1bitLLM weight_quant): s = 1/max(mean|W|, 1e-5); t = clip(round_half_even(W*s), -1, 1);
    effective weight t / s. Returns (trits int8, w_mult = 1/s)."""
    w = np.asarray(w, dtype=np.float32)
    mean = np.float32(np.abs(w).mean(dtype=np.float64))
    s = np.float32(1.0) / np.maximum(mean, np.float32(1e-5))
    t = np.empty(w.shape, np.int8)
    rows = max(1, (1 << 22) // max(1, w.shape[1]))
    for r0 in range(0, w.shape[0], rows):            # chunked: no full-size float temporaries
        blk = np.rint(w[r0:r0 + rows] * s)
        np.clip(blk, -1, 1, out=blk)
        t[r0:r0 + rows] = blk
    return t, float(np.float32(1.0) / s)


def _scale_value(ck, name):
    info = ck.require(name, [(1,), ()], ("F32", "BF16", "F16"), what="per-tensor weight scale")
    v = float(to_f32(ck.raw(name), info.dtype).reshape(-1)[0])
    if not math.isfinite(v) or v == 0:
        raise CheckpointError(f"tensor {name!r} holds scale {v}, which is not usable (must be finite and "
                              "non-zero); the checkpoint is damaged")
    return v


def _check_scale_magnitude(name, scale, mode, warned: set):
    """Trained latent weights have mean|W| ~ 0.01-0.1: a stored 1/absmean is >> 1 (divide), an
    absmean << 1 (multiply). Warn once per model when config.json's linear_class disagrees."""
    odd = (mode == "divide" and abs(scale) < 1) or (mode == "multiply" and abs(scale) > 1)
    if odd and mode not in warned:
        import warnings
        warned.add(mode)
        rule = "divides by" if mode == "divide" else "multiplies by"
        warnings.warn(f"{name}: weight_scale={scale:.4g} looks like "
                      f"{'an absmean' if mode == 'divide' else 'a reciprocal absmean'}, but linear_class "
                      f"{'bitlinear' if mode == 'divide' else 'autobitlinear'} {rule} it; following "
                      "config.json as transformers does (check the logits if the output looks wrong)",
                      stacklevel=4)


class ConvertedCache:
    """Latent (float) BitNet weights quantized to ternary once and kept on disk, so the next load
    of the same files skips the conversion. One safetensors file per source checkpoint:

        <prefix>.packed  uint8 [N/4, K]   trits + 1 in 2-bit fields, blocked along rows (2B-4T layout)
        <prefix>.w_mult  float32 [1]      effective weight = trit * w_mult

    The file name is a hash of the engine's conversion version and of every source file (its
    content hash when it lives in the Hugging Face cache, whose blob names are sha256 digests;
    otherwise name, size, mtime and a sha256 of its first and last MiB). A changed source file
    gives a new key; a damaged cache file is ignored and rewritten."""

    VERSION = "ryz-bitnet-ternary-1"

    def __init__(self, directory, ck: Checkpoint, kind: ModelKind):
        import hashlib
        h = hashlib.sha256(f"{self.VERSION}|{kind.variant}|{kind.scale_mode}".encode())
        for f in ck.source_files():
            h.update(_file_fingerprint(f).encode())
        self.path = Path(directory).expanduser() / f"{h.hexdigest()[:32]}.safetensors"
        _remove_stale_temp_files(self.path.parent)
        self.hit = False
        self._new = {}
        self._file = None
        if self.path.is_file():
            try:
                from ryzjupyter.engine.checkpoint import SafetensorsFile
                self._file = SafetensorsFile(self.path)
                self.hit = True
            except CheckpointError:
                self._file = None

    def get(self, prefix, shape):
        n, k = shape
        if prefix + ".packed" not in self._file.tensors:
            return None                                    # not cached (rows not divisible by 4)
        packed = np.ascontiguousarray(self._file.raw(prefix + ".packed"))
        mult = float(self._file.raw(prefix + ".w_mult")[0])
        if packed.shape != (n // 4, k):
            raise CheckpointError(f"the converted-weights cache {self.path} does not match the model; "
                                  "delete the file and load again")
        return packed, mult

    def put(self, prefix, trits, mult):
        n = trits.shape[0]
        if n % 4:
            return                                         # only 4-divisible row counts are packable
        r = n // 4
        u = (trits.astype(np.int16) + 1).astype(np.uint8)  # {0, 1, 2}
        packed = u[:r] | (u[r:2 * r] << 2) | (u[2 * r:3 * r] << 4) | (u[3 * r:] << 6)
        self._new[prefix + ".packed"] = packed
        self._new[prefix + ".w_mult"] = np.array([mult], np.float32)

    def save(self):
        import os
        import tempfile
        from safetensors.numpy import save_file
        if not self._new:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.stem}.{os.getpid()}.", suffix=".tmp")
            os.close(fd)
            save_file(self._new, tmp)
            os.replace(tmp, self.path)                     # atomic: never a half-written cache file
        except OSError as e:
            import warnings
            warnings.warn(f"could not write the converted-weights cache {self.path} ({e}); the next load "
                          "converts again", stacklevel=3)
        self._new = {}


def _remove_stale_temp_files(directory: Path):
    """Delete the temporary files of cache writes whose process is gone (a kernel killed or restarted
    while it wrote one: `<key>.<pid>.<random>.tmp`); a write still running in another process keeps
    its file."""
    import os
    try:
        names = list(directory.glob("*.tmp"))
    except OSError:
        return
    for p in names:
        parts = p.name.split(".")
        if len(parts) < 4 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, OverflowError):
            pass                                           # no such process: its write will never finish
        except OSError:
            continue                                       # a process of another user: alive
        else:
            continue                                       # its writer is alive
        try:
            p.unlink()
        except OSError:
            pass


def _file_fingerprint(path) -> str:
    import hashlib
    import os
    path = Path(path)
    real = path.resolve()
    name = real.name
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):   # an HF cache blob: its sha256
        return f"{path.name}:{name}"
    st = os.stat(real)
    h = hashlib.sha256()
    with open(real, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"


@dataclass
class LayerWeights:
    attn_norm: np.ndarray     # input_layernorm           [dim]
    wq: object                # q_proj                    [n_heads*head_dim, dim]
    wk: object                # k_proj                    [n_kv_heads*head_dim, dim]
    wv: object                # v_proj                    [n_kv_heads*head_dim, dim]
    attn_sub_norm: np.ndarray # attn_sub_norm / inner_attn_ln  [n_heads*head_dim]
    wo: object                # o_proj                    [dim, n_heads*head_dim]
    ffn_norm: np.ndarray      # post_attention_layernorm  [dim]
    w_gate: object            # gate_proj                 [hidden_dim, dim]
    w_up: object              # up_proj                   [hidden_dim, dim]
    ffn_sub_norm: np.ndarray  # ffn_sub_norm / ffn_layernorm   [hidden_dim]
    w_down: object            # down_proj                 [dim, hidden_dim]


# the seven ternary linears of a layer (LayerWeights fields), in the order q, k, v, o, gate, up, down
LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

HEAD4_GROUP = 32   # columns per float16 scale of the int4 lm_head (head4.h; its cost: docs/performance.md)


HEAD_CHUNK_ROWS = 8192   # head rows widened to float32 at a time while quantizing (multiple of 16)


def head4_empty(V, D, group=None):
    """Uninitialised (packed uint8 [ceil(V/16), ceil(D/G), 8G], scales uint16 float16 bits
    [ceil(V/16), ceil(D/G), 16]): the int4 lm_head format of _native/head4.h."""
    G = group or HEAD4_GROUP
    packed = np.empty((-(-V // 16), -(-D // G), 8 * G), np.uint8)
    scales = np.empty((packed.shape[0], packed.shape[1], 16), np.uint16)
    return packed, scales


def quantize_head4(head, group=None):
    """float32 head [V, D] -> (packed, scales) in the int4 lm_head format (head4_empty)."""
    packed, scales = head4_empty(*head.shape, group=group)
    K.quantize_head4(packed, scales, head)
    return packed, scales


class Weights:
    """All weights in compute format. Ternary linears are ryzjupyter.engine.ternary.TernaryWeight
    (packed 2-bit, converted once at load); norms and embeddings float32."""

    def __init__(self, cfg: Config, ck: Checkpoint, *, lm_head="f32", progress=None, convert_cache=None):
        from ryzjupyter.engine.ternary import TernaryWeight
        cache = convert_cache            # ConvertedCache or None: quantized latents saved on disk
        self.from_cache = cache is not None and cache.hit
        self.cfg = cfg
        kind = cfg.kind
        F = ("F32", "BF16", "F16")
        D, I, V = cfg.dim, cfg.hidden_dim, cfg.vocab_size
        Q, KV = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        onebit = kind.variant == "1bitllm"
        warned = set()
        sub_attn = "self_attn.inner_attn_ln" if onebit else "self_attn.attn_sub_norm"
        sub_ffn = "mlp.ffn_layernorm" if onebit else "mlp.ffn_sub_norm"

        def norm(name, n):
            ck.require(name, (n,), F, what="norm weight")
            return np.ascontiguousarray(ck.f32(name))

        def linear(prefix, n, k):
            name = prefix + ".weight"
            v = kind.variant
            if v == "packed":
                info = ck.index.get(name)
                if info is not None and info.dtype != "U8":
                    raise CheckpointError(f"tensor {name!r} is {info.dtype} but this checkpoint's other "
                                          "linears are packed uint8; the file mixes formats")
                ck.require(name, (n // 4, k), ("U8",), what="packed ternary weight, 4 values per byte")
                if n % 4:
                    raise CheckpointError(f"{name}: {n} output rows cannot be packed 4 per byte")
                scale = _scale_value(ck, prefix + ".weight_scale")
                mult = scale if kind.scale_mode == "multiply" else 1.0 / scale
                _check_scale_magnitude(name, scale, kind.scale_mode, warned)
                return TernaryWeight.from_bitnet_packed(np.ascontiguousarray(ck.raw(name)), mult)
            ck.require(name, (n, k), F, what="linear weight")
            if cache is not None and cache.hit:       # converted on an earlier load
                hit = cache.get(prefix, (n, k))
                if hit is not None:
                    return TernaryWeight.from_bitnet_packed(*hit)
            w = ck.f32(name)
            if v == "float":
                return FloatLinear(w)
            if v == "offline_float":
                t = np.rint(w)
                if not np.all((t == w) & (np.abs(t) <= 1)):
                    raise CheckpointError(f"tensor {name!r} should hold ternary values -1/0/+1 "
                                          "(autobitlinear offline) but does not")
                scale = _scale_value(ck, prefix + ".weight_scale")
                mult = scale if kind.scale_mode == "multiply" else 1.0 / scale
                return TernaryWeight.from_trits(t.astype(np.int8), mult)
            trits, mult = _absmean_trits(w)           # online / 1bitllm: quantize the latent weights once
            if cache is not None:
                cache.put(prefix, trits, mult)
            return TernaryWeight.from_trits(trits, mult)

        self.norm = None
        self.layers: list[LayerWeights] = []
        for l in range(cfg.n_layers):
            p = f"model.layers.{l}."
            self.layers.append(LayerWeights(
                attn_norm=norm(p + "input_layernorm.weight", D),
                wq=linear(p + "self_attn.q_proj", Q, D),
                wk=linear(p + "self_attn.k_proj", KV, D),
                wv=linear(p + "self_attn.v_proj", KV, D),
                attn_sub_norm=norm(p + sub_attn + ".weight", Q),
                wo=linear(p + "self_attn.o_proj", D, Q),
                ffn_norm=norm(p + "post_attention_layernorm.weight", D),
                w_gate=linear(p + "mlp.gate_proj", I, D),
                w_up=linear(p + "mlp.up_proj", I, D),
                ffn_sub_norm=norm(p + sub_ffn + ".weight", I),
                w_down=linear(p + "mlp.down_proj", D, I),
            ))
            if progress is not None:
                progress(l + 1, cfg.n_layers)
        self.norm = norm("model.norm.weight", D)
        if cache is not None and not cache.hit:
            cache.save()

        # embedding [V, D]: kept as stored (memory-mapped) and widened row by row at lookup
        info = ck.require("model.embed_tokens.weight", (V, D), F, what="token embedding")
        self._embed_raw, self._embed_dtype = ck.raw("model.embed_tokens.weight"), info.dtype
        # lm_head [V, D]: a stored lm_head.weight wins (transformers 5.23 does the same); else tied
        if "lm_head.weight" in ck:
            hinfo = ck.require("lm_head.weight", (V, D), F, what="output projection")
            src, src_dtype = ck.raw("lm_head.weight"), hinfo.dtype
            self.tied = False
        elif cfg.tie_embeddings:
            src, src_dtype = self._embed_raw, self._embed_dtype
            self.tied = True
        else:
            raise CheckpointError("tensor 'lm_head.weight' is missing and config.json has tie_word_embeddings="
                                  "false; the checkpoint is incomplete (or set tie_word_embeddings to true if "
                                  "the head is the embedding)")

        def head_rows(r0, r1):                         # rows r0..r1-1 of the head as float32
            return np.ascontiguousarray(to_f32(src[r0:r1], src_dtype), dtype=np.float32)
        # lm_head "f32": exact float matmul (as transformers); "int8": per-row int8 (4x less memory
        # traffic, logits differ by ~1e-3 relative); "int4" (lossy): int4 in groups of HEAD4_GROUP
        # columns with float16 scales (head4.h; ~7x less traffic than f32, perplexity cost in
        # docs/performance.md "What a lossy lm_head costs"). Only the quantized head is kept, and it is built
        # HEAD_CHUNK_ROWS rows at a time (both formats quantize rows independently), so loading
        # never holds a float32 copy of the whole head (1.3 GB for a 128k x 2560 head).
        self.lm_head = lm_head
        self.lm_head_f32 = self.lm_head_q = self.lm_head_s = None
        self.lm_head_p4 = self.lm_head_s4 = None
        if lm_head == "f32":
            self.lm_head_f32 = head_rows(0, V)
            if self.tied:                              # the f32 head serves the lookups too
                self._embed_raw, self._embed_dtype = self.lm_head_f32, "F32"
        elif lm_head == "int8":
            self.lm_head_q = np.empty((V, D), np.int8)
            self.lm_head_s = np.empty(V, np.float32)
            for r0 in range(0, V, HEAD_CHUNK_ROWS):
                r1 = min(V, r0 + HEAD_CHUNK_ROWS)
                K.quantize_rows_i8(self.lm_head_q[r0:r1], self.lm_head_s[r0:r1], head_rows(r0, r1))
        elif lm_head == "int4":
            self.lm_head_p4, self.lm_head_s4 = head4_empty(V, D)
            for r0 in range(0, V, HEAD_CHUNK_ROWS):    # a multiple of the 16-row tiles
                r1 = min(V, r0 + HEAD_CHUNK_ROWS)
                t0, t1 = r0 // 16, -(-r1 // 16)
                K.quantize_head4(self.lm_head_p4[t0:t1], self.lm_head_s4[t0:t1], head_rows(r0, r1))
        else:
            raise ValueError(f"lm_head must be 'f32' (exact), 'int8' or 'int4' (lossy), got {lm_head!r}")

    def head_arrays(self):
        """The arrays the lm_head reads per token (whatever its format)."""
        return [a for a in (self.lm_head_f32, self.lm_head_q, self.lm_head_s, self.lm_head_p4, self.lm_head_s4)
                if a is not None]

    def embed(self, out, tokens):
        """out[i] = embed_tokens[tokens[i]] as float32."""
        rows = self._embed_raw[tokens]
        out[...] = rows if self._embed_dtype == "F32" else to_f32(rows, self._embed_dtype)

    @property
    def nbytes(self):
        n = sum(w.nbytes for w in self.head_arrays())
        for lw in self.layers:
            for v in lw.__dict__.values():
                n += v.nbytes
        return n


# ----------------------------------------------------------------------------
# State: activation buffers, allocated once for up to `chunk` tokens per pass

class State:
    def __init__(self, cfg: Config, chunk: int):
        C, D, I = chunk, cfg.dim, cfg.hidden_dim
        Q = cfg.n_heads * cfg.head_dim
        f = np.float32
        self.chunk = C
        self.x = np.zeros((C, D), f)                                   # residual stream
        self.xb = np.zeros((C, D), f)                                  # normed input of a block
        self.an = np.zeros((C, Q), f)                                  # sub-normed attention output
        self.xb2 = np.zeros((C, D), f)                                 # block output before the add
        self.q = np.zeros((C, cfg.n_heads, cfg.head_dim), f)           # queries
        self.att = np.zeros((C, cfg.n_heads, cfg.head_dim), f)         # attention output
        self.k = np.zeros((C, cfg.n_kv_heads, cfg.head_dim), f)        # new keys/values before they are
        self.v = np.zeros((C, cfg.n_kv_heads, cfg.head_dim), f)        # rounded (int8 / 16-bit KV cache)
        self.hb = np.zeros((C, I), f)                                  # gate, then act(gate)*up
        self.hb2 = np.zeros((C, I), f)                                 # up
        self.hb3 = np.zeros((C, I), f)                                 # act(gate), then sub-normed
        self.pos = np.zeros(C, np.int64)                               # positions of the chunk
        self.cs = np.zeros((C, cfg.head_dim), f)                       # their RoPE cos | sin
        self.xq = np.zeros((C, D), np.int8)                            # int8 lm_head activations
        self.xs = np.zeros(C, f)


# ----------------------------------------------------------------------------
# the blocks

def attention_block(cfg, lw: LayerWeights, s: State, x, cache: KVCache, l, pos, m):
    """x [m, dim] (read), returns the attention branch output in s.xb2[:m].
    cache.k[l], cache.v[l]: this layer's cache [max_len, n_kv_heads, head_dim]; rows
    pos..pos+m-1 are written (float32; float16 / bfloat16 bits rounded to nearest even; or int8 +
    per-(row, head) scales)."""
    Q, KVD = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    kc, vc = cache.k[l], cache.v[l]
    f32 = cache.dtype == "f32"
    xb = s.xb[:m]
    K.rmsnorm(xb, x, lw.attn_norm, cfg.norm_eps)                          # x = rmsnorm(h)
    q = s.q[:m]
    lw.wq.linear(xb, out=q.reshape(m, Q))                               # q = Wq x
    k_new = kc[pos:pos + m] if f32 else s.k[:m]                         # f32 cache: k, v written in place
    v_new = vc[pos:pos + m] if f32 else s.v[:m]
    lw.wk.linear(xb, out=k_new.reshape(m, KVD))
    lw.wv.linear(xb, out=v_new.reshape(m, KVD))
    K.rope_apply(q, s.cs[:m])                                            # rotate_half RoPE on q and k
    K.rope_apply(k_new, s.cs[:m])                                        # (table: forward, per chunk)
    att = s.att[:m]                                                      # softmax(q k^T / sqrt(hd)) v, causal,
    if f32:                                                              # GQA
        K.attention(att, q, kc[:pos + m], vc[:pos + m], pos, cfg.head_dim ** -0.5)
    elif cache.dtype in ("f16", "bf16"):                                 # 16-bit: rounded on the way in
        K.store_kv16(kc[pos:pos + m], k_new, cache.dtype)
        K.store_kv16(vc[pos:pos + m], v_new, cache.dtype)
        K.attention_kv16(att, q, kc[:pos + m], vc[:pos + m], pos, cfg.head_dim ** -0.5, cache.dtype)
    else:
        ks, vs = cache.ks[l], cache.vs[l]
        K.quantize_kv_i8(kc[pos:pos + m], ks[pos:pos + m], k_new)
        K.quantize_kv_i8(vc[pos:pos + m], vs[pos:pos + m], v_new)
        K.attention_i8kv(att, q, kc[:pos + m], ks[:pos + m], vc[:pos + m], vs[:pos + m], pos,
                         cfg.head_dim ** -0.5)
    an = s.an[:m]
    K.rmsnorm(an, att.reshape(m, Q), lw.attn_sub_norm, cfg.norm_eps)     # attn_sub_norm before o_proj
    lw.wo.linear(an, out=s.xb2[:m])                                      # Wo


def ffn_block(cfg, lw: LayerWeights, s: State, x, m):
    """x [m, dim] (read), returns the FFN branch output in s.xb2[:m]."""
    xb = s.xb[:m]
    K.rmsnorm(xb, x, lw.ffn_norm, cfg.norm_eps)                          # x = rmsnorm(h)
    gate, up, tmp = s.hb[:m], s.hb2[:m], s.hb3[:m]
    lw.w_gate.linear(xb, out=gate)                                       # gate = Wg x
    lw.w_up.linear(xb, out=up)                                           # up = Wu x
    if cfg.act == "relu2":
        K.relu2(tmp, gate)                                               # relu(gate)^2
    else:
        K.silu(tmp, gate)                                                # silu(gate)
    K.mul(gate, tmp, up)                                                 # act(gate) * up
    K.rmsnorm(tmp, gate, lw.ffn_sub_norm, cfg.norm_eps)                  # ffn_sub_norm before down_proj
    lw.w_down.linear(tmp, out=s.xb2[:m])                                 # Wd


# ----------------------------------------------------------------------------
# the model

_MAX_KV_RESERVE = 1 << 46     # bytes of address space a KV cache may reserve (x86-64 user space: 128 TiB)


def default_cache_dir() -> Path:
    """Where converted weights are kept: $RYZ_CACHE_DIR, else ~/.cache/ryzjupyter/converted."""
    import os
    base = os.environ.get("RYZ_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "ryzjupyter" / "converted"


class BitNetModel(LanguageModel):
    """A loaded BitNet b1.58 model (also 1bitLLM and float BitNet checkpoints): ``generate``,
    ``stream``, ``chat`` and ``logits`` come from ``LanguageModel``.

    Made by ``ryzjupyter.load``, which passes its options on (see there for each):
    ``max_context``, ``lm_head``, ``prefill_chunk``, ``allow_pickle``, ``progress``, ``name``,
    ``convert_cache``, ``kv_cache``, ``ternary_layout``; ``tokenizer`` is the folder's
    ``Tokenizer`` (None: token ids only).

    Attributes:
        config: the model's shape and constants (``Config``: dims, heads, eps, rope theta...).
        weights: the loaded weights (packed ternary linears, norms, embedding, lm_head).
        max_context: tokens a session's KV cache holds.
        vocab_size: logits per token.
        tokenizer: the ``Tokenizer``, or None.
        fused_decode: True: one-token passes run one C call per layer (the same logits as the
            op-by-op path, which False selects).
    """

    family = "bitnet"

    def __init__(self, folder, *, tokenizer=None, max_context=None, lm_head="f32", prefill_chunk=64,
                 allow_pickle=False, progress=None, name=None, convert_cache=True, kv_cache="f32",
                 ternary_layout="auto"):
        if ternary_layout not in ("auto",) + LAYOUTS:
            raise ValueError(f"ternary_layout must be 'auto' (per matrix, measured), 'i2', 'tl' or 't5' "
                             f"(1.6 bits a weight: faster decode, slower prefill), got {ternary_layout!r}")
        self.path = Path(folder)
        self.name = name or self.path.name
        ck = Checkpoint(self.path, allow_pickle=allow_pickle)
        try:
            kind = detect_kind(ck.config, ck)
            if kind.family != "bitnet":
                raise CheckpointError(f"{self.path.name} is a {kind.family} model, not BitNet")
            self.config = Config.from_dict(ck.config, kind)
            cache = None
            if convert_cache and kind.variant in ("online", "1bitllm"):
                cache = ConvertedCache(default_cache_dir() if convert_cache is True else convert_cache, ck, kind)
            self.weights = Weights(self.config, ck, lm_head=lm_head, progress=progress, convert_cache=cache)
            ck.check_all_used(ignorable=(r".*rotary_emb\.inv_freq",))
        except Exception:
            ck.close()
            raise
        self._ckpt = ck                      # keeps the memory map of untied embeddings alive
        if max_context is not None and (not isinstance(max_context, int) or max_context < 1):
            raise ValueError(f"max_context must be a positive integer, got {max_context!r}")
        self.max_context = min(self.config.max_seq_len, max_context or self.config.max_seq_len)
        c = self.config                      # a session's KV cache reserves (np.zeros) max_context rows
        reserve = 2 * c.n_layers * self.max_context * c.n_kv_heads * c.head_dim * 4
        if reserve > _MAX_KV_RESERVE:
            fits = max(1, _MAX_KV_RESERVE // (2 * c.n_layers * c.n_kv_heads * c.head_dim * 4))
            raise CheckpointError(f"a KV cache of {self.max_context} tokens (max_position_embeddings in "
                                  f"config.json) needs {reserve / 2**40:.0f} TiB of address space, more than a "
                                  f"64-bit process has; load with max_context=N (at most {fits})")
        self.vocab_size = self.config.vocab_size
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive integer, got {prefill_chunk!r}")
        self.kv_dtype = check_kv_format(kv_cache)
        self.state = State(self.config, prefill_chunk)
        self.tokenizer = tokenizer
        self.tokens_processed = 0
        self.fused_decode = True             # one-token passes through bitnet_decode (same logits)
        if ternary_layout != "auto":
            self.repack_linears(ternary_layout)

    def repack_linears(self, layout) -> int:
        """Store every ternary linear in `layout` ('i2', 'tl' or 't5'; the same trits, so the
        logits do not change); returns how many were repacked. 't5' (5 trits a byte) reads 20 %
        fewer bytes per decode token but prefills slower (docs/performance.md has the ratio)."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        n = 0
        for lw in self.weights.layers:
            for name in LINEARS:
                w = getattr(lw, name)
                if hasattr(w, "repack"):
                    w.repack(layout)
                    n += 1
        self._fused_ok = self._fused_plan = self._fused_native = None   # the fused decode re-checks the layouts
        return n

    def new_cache(self, max_len=None) -> KVCache:
        """An empty KV cache for ``max_len`` tokens (default ``max_context``) in the model's
        ``kv_cache`` format; sessions make their own, ``forward`` takes one."""
        c = self.config
        return KVCache(c.n_layers, max_len or self.max_context, c.n_kv_heads, c.head_dim, self.kv_dtype)

    def forward(self, tokens, cache: KVCache, all_logits=False):
        """Run `tokens` at positions len(cache).. ; write their keys/values; return float32 logits
        [len(tokens), vocab] (all_logits) or [1, vocab] for the last token."""
        cfg, w, s = self.config, self.weights, self.state
        tokens = forward_tokens(tokens, cache, cfg.vocab_size)
        M, pos0 = tokens.size, len(cache)
        if M == 1 and self.fused_decode:                # decode: one C call per layer (bitnet_decode.py),
            if bitnet_decode.supported(self, cache):    # bitwise the same logits and cache rows
                return bitnet_decode.forward_one(self, tokens, cache)   # (books its own profile phases)
        out = np.empty((M if all_logits else 1, cfg.vocab_size), np.float32)
        for c0 in range(0, M, s.chunk):                 # prefill in chunks of up to s.chunk tokens
            m = min(s.chunk, M - c0)
            pos = pos0 + c0
            s.pos[:m] = np.arange(pos, pos + m)
            K.rope_table(s.cs[:m], s.pos[:m], cfg.rope_theta)  # cos | sin of the chunk's positions
            x = s.x[:m]
            w.embed(x, tokens[c0:c0 + m])               # h = embed[ids]
            for l, lw in enumerate(w.layers):
                attention_block(cfg, lw, s, x, cache, l, pos, m)
                K.add(x, x, s.xb2[:m])                  # h = h + attn (in place)
                ffn_block(cfg, lw, s, x, m)
                K.add(x, x, s.xb2[:m])                  # h = h + ffn
            if all_logits:
                rows, dst = slice(0, m), out[c0:c0 + m]
            elif c0 + m == M:
                rows, dst = slice(m - 1, m), out
            else:
                continue
            xb = s.xb[rows]
            with PROFILER.phase("lm_head"):
                _native.rmsnorm(xb, x[rows], w.norm, cfg.norm_eps)  # final norm
                self._classifier(dst, xb)               # logits = norm(h) @ lm_head^T
        cache.append(tokens.tolist())                   # only now: an interrupted pass leaves no trace
        self.tokens_processed += M
        return out

    def forward_batch(self, tokens, caches):
        """One token for each of B sequences (``tokens[m]`` at position ``len(caches[m])`` of
        ``caches[m]``): one fused native step in which every linear is a GEMM over the B tokens
        (bitnet_decode.forward_batch); float32 logits [B, vocab], row m bitwise
        ``forward([tokens[m]], caches[m])``. Float linears run the streams in turn."""
        if self.fused_decode and caches and all(bitnet_decode.supported(self, c) for c in caches):
            return bitnet_decode.forward_batch(self, tokens, caches)
        return super().forward_batch(tokens, caches)

    def prepare_batching(self) -> bool:
        """Make forward_batch take the batched native step: lookup-table (TL) linears are
        repacked to I2 once (the same trits: the logits do not change). False for float linears
        (forward_batch then runs the streams in turn)."""
        return bitnet_decode.ensure_i2(self)

    # -- the verify pass of speculative decoding (one batched pass; see bitnet_decode.verify)
    def _batched_verify(self, cache) -> bool:
        """True when the verify pass can run as one batched call: the fused decode's weights (every
        linear I2, or every one T5; weights in another layout are repacked to I2 once, the same
        trits) and a cache of a format the fused calls take (all of KV_FORMATS)."""
        if not self.fused_decode:
            return False
        if not bitnet_decode.supported(self, cache):
            if getattr(cache, "dtype", "f32") not in KV_FORMATS or not bitnet_decode.ensure_i2(self):
                return False
        return True

    def verify(self, tokens, cache):
        """Speculative decoding's verify pass (LanguageModel.verify) in one batched pass: each weight
        row read once for all tokens; each row of logits bitwise a decode step's."""
        if not self._batched_verify(cache):
            return super().verify(tokens, cache)
        return bitnet_decode.verify(self, tokens, cache)

    def verify_tree(self, tokens, depths, cache):
        """A tree of draft tokens (LanguageModel.verify_tree) in one batched pass."""
        if not self._batched_verify(cache):
            return super().verify_tree(tokens, depths, cache)
        return bitnet_decode.verify(self, tokens, cache, depths)

    def _classifier(self, out, xb):
        w = self.weights
        if w.lm_head_f32 is not None:
            _native.matmul_f32(out, xb, w.lm_head_f32)
            return
        n = xb.shape[0]
        xq, xs = self.state.xq[:n], self.state.xs[:n]
        _native.quantize_rows_i8(xq, xs, xb)
        if w.lm_head_q is not None:
            _native.matmul_i8(out, xq, xs, w.lm_head_q, w.lm_head_s)
        else:                                           # int4: all n tokens per weight tile
            _native.lm_head_i4(out, xq, xs, w.lm_head_p4, w.lm_head_s4)

    @property
    def nbytes(self):
        return self.weights.nbytes

    def close(self):
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None

    def __repr__(self):
        c = self.config
        return (f"BitNetModel({self.name!r}, {c.kind.variant}, layers={c.n_layers}, dim={c.dim}, "
                f"heads={c.n_heads}/{c.n_kv_heads}, vocab={c.vocab_size}, ctx={self.max_context}, "
                f"{self.nbytes / 2**20:.0f} MiB)")
