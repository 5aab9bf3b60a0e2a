"""`python -m ryzjupyter.bench model`: a whole model's decode and prefill against this machine.

    python -m ryzjupyter.bench model --shape bitnet-2b4t [--threads 1,2] [--repeat 5]
        [--json FILE] [--vs llamacpp] [--model PATH] [--lm-head int8|int4|f32]

What it does (docs/performance.md, "How the figures are made"):
1. Limits, measured here with ``ryzjupyter.bench.probes``: streaming read bandwidth and the
   register-only int8 peak of the ISA level in use (none at scalar), for each thread count.
2. A model: ``--model PATH`` (a real checkpoint), or a random-weight BitNet b1.58 of the chosen
   shape written with ``ryzjupyter.families.random_bitnet`` (no download; kept in ``--model-dir``).
3. Per thread count, median of ``--repeat`` runs:
   - decode tokens/s at context 0 and 2k (``--contexts``): ``--decode-tokens`` single-token
     forward passes, each followed by a greedy pick (what generation does per token). The long
     context is reached by filling the KV cache with random rows (the cost of attention does
     not depend on the values), not by a 2k-token prefill.
   - prefill tokens/s for 128 and 512 tokens (``--prefill``) into an empty cache; the time of
     the pass including the greedy pick of the first new token is the time to first token.
   - the roofline: decode bytes per token = packed ternary weights + norms + lm_head (+ its
     scales) + the KV rows read at that context (average over the measured tokens); decode
     roofline tokens/s = measured bandwidth / bytes per token. Prefill ops = 2 x (ternary MACs per
     token x n + the lm_head row of the last token) int8 ops, as a fraction of the int8 peak
     read right after each prefill run, as long as it (and of the peak read at the start);
     attention's float work is not counted: it is reported in the attention row.
   - Python overhead per decode token: the same decode step with every native kernel replaced by
     a no-op (so only the Python/numpy glue runs), as a fraction of the real step.
   - peak RSS of the process (load, and the measurements after a reset of the high-water mark).
4. ``--vs llamacpp``: the same weights written to a GGUF (TQ2_0 linears, Q8_0 embedding/lm_head),
   timed by llama.cpp (llama-cpp-python, in a worker process) alternately with ours, one
   measurement after the other; ratios printed (see ryzjupyter/bench/llamacpp.py).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from ryzjupyter import _native
from ryzjupyter.bench import probes, rss
from ryzjupyter.bench.probes import bandwidth_for, peak_for
from ryzjupyter.families.bitnet import LINEARS

SHAPES = {
    "bitnet-2b4t": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
                        num_key_value_heads=5, vocab_size=128256),
    "bitnet-0.7b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        num_key_value_heads=16, vocab_size=32002),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}
_SHAPE_FLAGS = {"hidden_size": "dim", "intermediate_size": "ffn", "num_hidden_layers": "layers",
                "num_attention_heads": "heads", "num_key_value_heads": "kv_heads", "vocab_size": "vocab"}


def add_parser(sub):
    p = sub.add_parser("model", help="whole-model decode/prefill vs bandwidth and int8 peak (and llama.cpp)")
    p.add_argument("--shape", default="bitnet-2b4t", choices=sorted(SHAPES), help="random-weight model shape")
    for key, flag in _SHAPE_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", type=int, default=None, help=f"override {key}")
    p.add_argument("--model", metavar="PATH", help="a real checkpoint (folder or hub id) instead of random weights")
    p.add_argument("--model-dir", metavar="DIR", help="where the random model is written and kept "
                   "(default $RYZ_BENCH_DIR or ~/.cache/ryzjupyter/bench)")
    p.add_argument("--lm-head", default="int8", choices=("int8", "int4", "f32"),
                   help="lm_head format (default int8; int4 is lossy, see docs/performance.md)")
    p.add_argument("--kv-cache", default="f32", type=_kv_list, metavar="FMT[,FMT...]",
                   help="KV cache formats, comma separated (f32 exact, the default; f16, bf16: half the cache "
                   "traffic; int8: a quarter); several are timed side by side, alternately, on the same model")
    p.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    p.add_argument("--repeat", type=int, default=5, help="runs per figure (median); default 5")
    p.add_argument("--decode-tokens", type=int, default=32, help="tokens per decode run (default 32)")
    p.add_argument("--contexts", default="0,2048,8192", help="decode contexts (tokens already in the cache)")
    p.add_argument("--prefill", default="512,2048,8192", help="prefill lengths")
    p.add_argument("--attention", default="tiled", help="attention variants, comma separated, timed alternately "
                   "(set_attention_variant): tiled (blocked prefill, streaming decode) and/or units (the kernels "
                   "those replaced)")
    p.add_argument("--prefill-chunk", type=int, default=None, help="engine prefill chunk (default: engine's)")
    p.add_argument("--bw-mib", type=int, default=1024, help="bandwidth probe buffer (MiB)")
    p.add_argument("--json", metavar="FILE", help="write one JSON record per measurement")
    p.add_argument("--vs", choices=("llamacpp",), help="also time llama.cpp on the same weights, alternating")
    p.add_argument("--vs-contexts", default=None, help="decode contexts timed on llama.cpp too (each needs a "
                   "real prefill there); default: every --contexts")
    p.add_argument("--llamacpp-python", metavar="EXE", help="python that has llama_cpp (default: "
                   "$RYZ_LLAMACPP_PYTHON, else this one)")
    p.add_argument("--gguf", metavar="FILE", help="GGUF path (default: next to the random model)")
    p.add_argument("--ternary-layout", default="auto", choices=("auto", "i2", "t5"),
                   help="repack the ternary linears after loading: i2 (2 bits a weight) or t5 (5 trits "
                   "a byte, 1.6 bits); auto keeps the loader's choice")
    p.add_argument("--paths", default="python,fused", help="decode paths: 'python' (bitnet.forward, a "
                   "native call per op) and/or 'fused' (bitnet_decode: one C call per layer)")
    p.add_argument("--no-overhead", action="store_true", help="skip the Python-overhead measurement")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes (for tests), not meaningful")
    p.set_defaults(run=run)
    return p


def _kv_list(text):
    import argparse

    from ryzjupyter.engine.kv_cache import KV_FORMATS
    kvs = [k for k in text.split(",") if k]
    bad = [k for k in kvs if k not in KV_FORMATS]
    if not kvs or bad or len(set(kvs)) != len(kvs):
        raise argparse.ArgumentTypeError(f"--kv-cache takes distinct formats out of {', '.join(KV_FORMATS)}, "
                                         f"comma separated, got {text!r}")
    return ",".join(kvs)


# ---- the model ----------------------------------------------------------------------------------

def shape_from_args(args) -> dict:
    shape = dict(SHAPES["tiny" if args.quick and args.shape == "bitnet-2b4t" else args.shape])
    for key, flag in _SHAPE_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            shape[key] = v
    return shape


def shape_key(shape: dict, seed=0) -> str:
    return "bitnet-" + "-".join(str(shape[k]) for k in _SHAPE_FLAGS) + f"-s{seed}"


def random_model_folder(shape: dict, model_dir=None, seed=0) -> Path:
    """A random BitNet folder of this shape, written once and reused (config.json written last)."""
    from ryzjupyter.families.random_bitnet import write_random_bitnet
    base = Path(model_dir or os.environ.get("RYZ_BENCH_DIR") or Path.home() / ".cache" / "ryzjupyter" / "bench")
    folder = base / shape_key(shape, seed)
    if not (folder / "config.json").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        write_random_bitnet(tmp, seed=seed, max_position_embeddings=8192, **shape)
        if folder.exists():
            import shutil
            shutil.rmtree(folder)
        tmp.rename(folder)
    return folder


def load_model(folder, lm_head="int8", prefill_chunk=None, max_context=None, kv_cache="f32"):
    from ryzjupyter.families.bitnet import BitNetModel
    kw = {} if prefill_chunk is None else {"prefill_chunk": prefill_chunk}
    if kv_cache != "f32":
        kw["kv_cache"] = kv_cache
    return BitNetModel(folder, lm_head=lm_head, max_context=max_context, **kw)


def ternary_params(model) -> int:
    return sum(int(np.prod(getattr(lw, n).shape)) for lw in model.weights.layers
               for n in LINEARS)


def pass_floor(model, n: int, layers_s: float, head_s: float, peak_gops: float) -> dict:
    """The least time a forward pass of n tokens can take on this machine with int8 multiply-adds:
    each phase (the layers, then the head) at least as long as that phase of a one-token pass
    (layers_s, head_s: it reads the same weights once) and at least its n tokens' multiply-adds at
    the int8 peak (GOPS = 2 x multiply-adds a second). Used by `bench serve` (the ceiling of
    batching) and `bench speculative` (the floor of r)."""
    lm, hm = ternary_params(model), model.config.vocab_size * model.config.dim
    cl, ch = 2 * n * lm / (peak_gops * 1e9), 2 * n * hm / (peak_gops * 1e9)
    return {"int8_peak_gops": peak_gops, "layer_macs": lm, "head_macs": hm, "compute_floor_s": cl + ch,
            "floor_s": max(layers_s, cl) + max(head_s, ch), "layers_compute_s": cl, "head_compute_s": ch}


def decode_bytes(model, kv_rows: float, kv=None) -> dict:
    """Bytes one decode step reads: every packed weight, the norms, the lm_head (and its row
    scales), one embedding row and kv_rows rows of keys and values in every layer, in the KV
    cache format kv (default: the model's)."""
    w, c = model.weights, model.config
    lin = norm = 0
    for lw in w.layers:
        lin += sum(getattr(lw, n).nbytes for n in LINEARS)
        norm += sum(getattr(lw, n).nbytes for n in ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"))
    norm += w.norm.nbytes
    head = sum(a.nbytes for a in w.head_arrays())          # int4: packed + float16 scales
    kv = kv or getattr(model, "kv_dtype", "f32")
    if kv == "int8":                                                  # int8 values + f32 (row, head) scale
        kv_row = 2 * c.n_layers * c.n_kv_heads * (c.head_dim + 4)
    else:                                                             # float32 / 16-bit K and V, all layers
        kv_row = 2 * c.n_layers * c.n_kv_heads * c.head_dim * (2 if kv in ("f16", "bf16") else 4)
    kv = kv_row * kv_rows
    embed = c.dim * 4
    return {"linear": lin, "norms": norm, "lm_head": head, "embed_row": embed, "kv": kv,
            "kv_per_token": kv_row, "total": lin + norm + head + embed + kv}


def fill_cache(model, cache, ctx, rng):
    """Make `cache` hold ctx tokens of random keys/values (timing only), in its format."""
    for l in range(cache.n_layers):
        if getattr(cache, "dtype", "f32") == "int8":
            cache.k[l][:ctx] = rng.integers(-127, 128, cache.k[l][:ctx].shape, dtype=np.int8)
            cache.v[l][:ctx] = rng.integers(-127, 128, cache.v[l][:ctx].shape, dtype=np.int8)
            cache.ks[l][:ctx] = 0.01
            cache.vs[l][:ctx] = 0.01
            continue
        shape = cache.k[l][:ctx].shape
        cache.store(l, 0, rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32))
    cache.truncate(0)
    cache.append([1] * ctx)


def decode_run(model, cache, ctx, n, greedy=True):
    """n single-token steps after ctx cached tokens; returns seconds."""
    cache.truncate(ctx)
    tok = 1
    t0 = time.perf_counter()
    for _ in range(n):
        logits = model.forward([tok], cache)
        if greedy:
            tok = int(np.argmax(logits[0]))
    return time.perf_counter() - t0


def prefill_run(model, cache, tokens):
    """Prefill into an empty cache and pick the first new token; returns seconds (= TTFT)."""
    cache.truncate(0)
    t0 = time.perf_counter()
    logits = model.forward(tokens, cache)
    int(np.argmax(logits[0]))
    return time.perf_counter() - t0


def prefill_attention_seconds(model, n, rng, kv=None):
    """Seconds the attention of an n-token prefill takes: one layer's attention calls over the
    engine's prefill chunks (a cache of random keys and values; the cost does not depend on the
    values) times the number of layers (every layer has the same shapes)."""
    c = model.config
    C = model.state.chunk
    k = rng.standard_normal((n, c.n_kv_heads, c.head_dim), dtype=np.float32)
    v = rng.standard_normal((n, c.n_kv_heads, c.head_dim), dtype=np.float32)
    q = rng.standard_normal((C, c.n_heads, c.head_dim), dtype=np.float32)
    out = np.empty_like(q)
    scale = c.head_dim ** -0.5
    kv = kv or getattr(model, "kv_dtype", "f32")
    i8, h16 = kv == "int8", kv in ("f16", "bf16")
    if h16:
        k16, v16 = (np.empty(k.shape, np.float16 if kv == "f16" else np.uint16) for _ in range(2))
        _native.store_kv16(k16, k, kv)
        _native.store_kv16(v16, v, kv)
    if i8:
        k8, v8 = np.empty(k.shape, np.int8), np.empty(v.shape, np.int8)
        ks, vs = np.empty(k.shape[:2], np.float32), np.empty(v.shape[:2], np.float32)
        _native.quantize_kv_i8(k8, ks, k)
        _native.quantize_kv_i8(v8, vs, v)
    t0 = time.perf_counter()
    for c0 in range(0, n, C):
        m = min(C, n - c0)
        if i8:
            _native.attention_i8kv(out[:m], q[:m], k8[:c0 + m], ks[:c0 + m], v8[:c0 + m], vs[:c0 + m], c0, scale)
        elif h16:
            _native.attention_kv16(out[:m], q[:m], k16[:c0 + m], v16[:c0 + m], c0, scale, kv)
        else:
            _native.attention(out[:m], q[:m], k[:c0 + m], v[:c0 + m], c0, scale)
    return (time.perf_counter() - t0) * c.n_layers


class _Null:
    """Stands in for the native module: every function is a no-op returning None."""

    def __getattr__(self, name):
        return _noop


def _noop(*a, **k):
    return None


def python_overhead(model, n=16, repeat=5):
    """Seconds per decode token spent outside the kernels, and the per-run figures.

    Python path: the decode step with every native call of the engine (bitnet.py's and
    ternary.py's) replaced by a no-op. Fused path (one C call per token): the decode step's wall
    time minus the time of the native calls, the token call counting only the compute it
    measures in C, so its argument checks count as overhead."""
    import ryzjupyter.families.bitnet as B
    import ryzjupyter.families.bitnet_decode as F
    import ryzjupyter.engine.ternary as T
    cache = model.new_cache(n + 2)
    if getattr(model, "fused_decode", False) and F.supported(model, cache):
        timed = _TimedNative(F.K)
        F.K = timed
        try:
            runs = []
            decode_run(model, cache, 0, 2, greedy=False)
            for _ in range(repeat):
                timed.seconds = 0.0
                runs.append((decode_run(model, cache, 0, n, greedy=False) - timed.seconds) / n)
        finally:
            F.K = timed.module
        return statistics.median(runs), runs
    saved = B.K, getattr(B, "_native", None), T._native, F.K
    B.K, B._native, T._native, F.K = _Null(), _Null(), _Null(), _Null()
    try:
        runs = []
        decode_run(model, cache, 0, 2, greedy=False)
        for _ in range(repeat):
            runs.append(decode_run(model, cache, 0, n, greedy=False) / n)
    finally:
        B.K, B._native, T._native, F.K = saved
    return statistics.median(runs), runs


class _TimedNative:
    """Stands in for the native module: every call runs and its wall time is summed in
    `seconds`, except bitnet_decode_token's, for which the compute it reports is summed."""

    def __init__(self, module):
        self.module, self.seconds = module, 0.0

    def __getattr__(self, name):
        fn = getattr(self.module, name)
        if not callable(fn):
            return fn

        def timed(*args):
            t0 = time.perf_counter()
            r = fn(*args)
            if name == "bitnet_decode_token":
                self.seconds += r[0] + r[1]
            else:
                self.seconds += time.perf_counter() - t0
            return r
        return timed


class _path:
    """with _path(model, "fused"|"python"): one-token passes go through that path."""

    def __init__(self, model, path):
        self.model, self.path = model, path

    def __enter__(self):
        from ryzjupyter.families import bitnet_decode
        if self.path == "fused":
            bitnet_decode.install(self.model)
        else:
            bitnet_decode.uninstall(self.model)

    def __exit__(self, *exc):
        from ryzjupyter.families import bitnet_decode
        bitnet_decode.uninstall(self.model)


# ---- the benchmark ------------------------------------------------------------------------------

def _median(xs):
    return statistics.median(xs)


def run(args) -> int:
    quick = args.quick
    repeat = max(1, 1 if quick else args.repeat)
    threads_list = [int(t) for t in args.threads.split(",") if t.strip()]
    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    prefills = [int(n) for n in args.prefill.split(",") if n.strip()]
    ndec = args.decode_tokens
    variants = [v for v in args.attention.split(",") if v.strip()]
    kvs = _kv_list(args.kv_cache).split(",")   # KV cache formats, timed side by side
    for v in variants:
        if v not in ("tiled", "units"):
            raise SystemExit(f"--attention takes tiled and/or units, got {v!r}")
    if quick:
        contexts, prefills, ndec = [0, 64], [16], 4
    vs_contexts = contexts if args.vs_contexts is None else [int(c) for c in args.vs_contexts.split(",") if c.strip()]
    info = _native.info()
    peak_loop = probes.int8_peak_loop()
    load0 = os.getloadavg()
    print(f"machine: {probes.cpu_model()}, {os.cpu_count()} logical CPUs, isa {info['isa']}, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    records = []
    meta = {"bench": "model", "machine": probes.machine(getattr(args, "argv", None)), "native": {k: info[k] for k in ("isa", "threads", "version")},
            "load_before": load0, "repeat": repeat}

    def rec(**kw):
        kw.setdefault("engine", "ryzjupyter")
        kw.update(load_avg=os.getloadavg()[0])
        records.append(kw)
        return kw

    # 1. machine limits
    bw, peak = {}, {}
    print(f"\n== machine limits (read loop: {probes.read_loop()}; int8 peak loop: "
          f"{peak_loop or 'none at the scalar level'}) ==")
    for th in threads_list:
        bw[th], runs = probes.measure_bandwidth(32 if quick else args.bw_mib, th, repeat)
        rec(phase="read_bandwidth", threads=th, gbps=bw[th], best=max(runs), runs=runs)
        msg = f"  {th} thr: read bandwidth {bw[th]:6.1f} GB/s (best {max(runs):.1f})"
        if peak_loop:
            peak[th], runs = probes.measure_int8_peak(th, repeat, 20_000 if quick else probes.INT8_ITERS)
            rec(phase="int8_peak", threads=th, level=info["isa"], gops=peak[th], best=max(runs))
            msg += f", int8 peak ({info['isa']}) {peak[th]:7.1f} GOPS (best {max(runs):.1f})"
        print(msg)

    # 2. the model
    t0 = time.perf_counter()
    rss.reset_peak()
    if args.model:
        import ryzjupyter
        kw = {"lm_head": args.lm_head}
        if kvs[0] != "f32":
            kw["kv_cache"] = kvs[0]
        if args.prefill_chunk:
            kw["prefill_chunk"] = args.prefill_chunk
        model = ryzjupyter.load(args.model, **kw)
        folder, shape = None, None
    else:
        shape = shape_from_args(args)
        folder = random_model_folder(shape, args.model_dir)
        load_s0 = time.perf_counter()
        model = load_model(folder, args.lm_head, args.prefill_chunk, kv_cache=kvs[0])
        t0 = load_s0
    load_s = time.perf_counter() - t0
    if args.ternary_layout != "auto":
        n_repacked = model.repack_linears(args.ternary_layout)
        print(f"  ternary layout: {args.ternary_layout} ({n_repacked} linears repacked after loading)")
    cfg = model.config
    rss_load_peak, rss_loaded = rss.peak(), rss.current()
    P = ternary_params(model)
    print(f"\n== model: {model!r}\n  {P / 1e9:.3f} G ternary params, lm_head {args.lm_head}, loaded in "
          f"{load_s:.1f} s, RSS {rss_loaded / 2**20:.0f} MiB (peak while loading {rss_load_peak / 2**20:.0f} MiB)")
    rec(phase="memory", what="after_load", rss_bytes=rss_loaded, peak_rss_bytes=rss_load_peak, load_s=load_s)
    b0 = decode_bytes(model, 0)
    print(f"  KV cache {', '.join(kvs)}; decode bytes/token: linear {b0['linear'] / 1e6:.1f} MB + lm_head {b0['lm_head'] / 1e6:.1f} MB + "
          f"norms {b0['norms'] / 1e6:.2f} MB + KV {b0['kv_per_token'] / 1e3:.1f} kB per context token")

    vs = None
    if args.vs == "llamacpp":
        from ryzjupyter.bench import llamacpp
        if folder is None:
            raise SystemExit("--vs llamacpp needs the random model (no --model): the GGUF is written from it")
        gguf = Path(args.gguf) if args.gguf else folder / "model-tq2_0.gguf"
        vs = llamacpp.Worker.start(folder, gguf, python=args.llamacpp_python,
                                   n_ctx=max(prefills + [c + ndec for c in contexts]) + 16)
        meta["llamacpp"] = vs.describe()
        print(f"  llama.cpp: {meta['llamacpp']}")

    from ryzjupyter.families import bitnet_decode
    paths = [p for p in args.paths.split(",") if p]
    if "fused" in paths and not bitnet_decode.ensure_i2(model):
        print("  (the fused decode needs ternary I2 or T5 weights: measuring the Python path only)")
        paths = [p for p in paths if p != "fused"] or ["python"]
    rng = np.random.default_rng(0)
    prev_threads = _native.get_num_threads()
    prev_variant = _native.set_attention_variant(variants[0])

    def label(var, kv=None):   # the variant (and KV cache format) in a row's name when several are timed
        return (f" {var}" if len(variants) > 1 else "") + (f" kv {kv}" if kv and len(kvs) > 1 else "")

    from ryzjupyter.engine.kv_cache import KVCache

    def new_cache(kv, n):
        return KVCache(cfg.n_layers, n, cfg.n_kv_heads, cfg.head_dim, kv)
    pbuf = np.ones((8 if quick else 256) << 20, np.uint8)    # bandwidth probes between decode runs
    rss.reset_peak()
    results = []          # printed table rows
    try:
        # decode
        caches = {}
        for ctx in contexts:
            for kv in kvs:
                cache = new_cache(kv, ctx + ndec + 2)
                if ctx:
                    fill_cache(model, cache, ctx, rng)
                caches[ctx, kv] = cache
        for th in threads_list:
            _native.set_num_threads(th)
            if vs:
                vs.set_threads(th)
            for ctx in contexts:
                kv_rows = ctx + (ndec + 1) / 2
                nb = {kv: decode_bytes(model, kv_rows, kv)["total"] for kv in kvs}
                theirs = vs is not None and ctx in vs_contexts
                if theirs:
                    vs.decode(ctx, 2)
                pv = [(p, var, kv) for p in paths for var in variants for kv in kvs]
                runs = {x: [] for x in pv}
                their_t = []
                for p, var, kv in pv:                                 # warm-up
                    _native.set_attention_variant(var)
                    with _path(model, p):
                        decode_run(model, caches[ctx, kv], ctx, 2)
                bw_paired = {x: [] for x in pv}
                for _ in range(repeat):                               # alternating: ours, theirs, ...
                    for p, var, kv in pv:
                        _native.set_attention_variant(var)
                        with _path(model, p):
                            t = decode_run(model, caches[ctx, kv], ctx, ndec)
                        runs[p, var, kv].append(t)
                        bw_paired[p, var, kv].append(bandwidth_for(pbuf, th, t))   # the bandwidth, right after
                    if theirs:
                        their_t.append(vs.decode(ctx, ndec))
                # roofline bandwidth: the median of the probes read right after each run, each as
                # long as that run (this machine's bandwidth drifts by 2x within a minute)
                bw_runs = [b for x in pv for b in bw_paired[x]]
                bw_dec = _median(bw_runs)
                roofs = {kv: bw_dec * 1e9 / nb[kv] for kv in kvs}
                roof = roofs[kvs[0]]
                lt = ndec / _median(their_t) if theirs else None
                if theirs:
                    rec(engine="llama.cpp", threads=th, phase="decode", n_tokens=ndec, context=ctx, tok_s=lt,
                        roofline_fraction=lt / roof, roofline_tok_s=roof,
                        runs_tok_s=[ndec / t for t in their_t])
                # attention's share: the attention kernel alone over this cache, every layer
                qa = rng.standard_normal((1, cfg.n_heads, cfg.head_dim), dtype=np.float32)
                oa = np.empty_like(qa)
                at = {(var, kv): [] for var in variants for kv in kvs}
                for _ in range(repeat):
                    for var, kv in at:
                        _native.set_attention_variant(var)
                        cache = caches[ctx, kv]
                        t0 = time.perf_counter()
                        for l in range(cfg.n_layers):
                            if kv in ("f16", "bf16"):
                                _native.attention_kv16(oa, qa, cache.k[l][:ctx + 1], cache.v[l][:ctx + 1], ctx,
                                                       cfg.head_dim ** -0.5, kv)
                            elif kv == "int8":
                                _native.attention_i8kv(oa, qa, cache.k[l][:ctx + 1], cache.ks[l][:ctx + 1],
                                                       cache.v[l][:ctx + 1], cache.vs[l][:ctx + 1], ctx,
                                                       cfg.head_dim ** -0.5)
                            else:
                                _native.attention(oa, qa, cache.k[l][:ctx + 1], cache.v[l][:ctx + 1], ctx,
                                                  cfg.head_dim ** -0.5)
                        at[var, kv].append(time.perf_counter() - t0)
                for var, kv in at:
                    kv_b = decode_bytes(model, ctx + 1, kv)["kv"]
                    att_s = _median(at[var, kv])
                    rec(threads=th, phase="attention", context=ctx, attention=var, kv_cache=kv, seconds_per_token=att_s,
                        kv_bytes=kv_b, gbps=kv_b / att_s / 1e9)
                for p, var, kv in pv:
                    att_s = _median(at[var, kv])
                    tok_s = ndec / _median(runs[p, var, kv])
                    nbytes, roof = nb[kv], roofs[kv]
                    # per run: the bytes it read per second over the probe right after it
                    paired = _median([ndec * nbytes / t / (b * 1e9) for t, b in zip(runs[p, var, kv], bw_paired[p, var, kv])])
                    r = rec(threads=th, phase="decode", path=p, attention=var, kv_cache=kv, n_tokens=ndec, context=ctx,
                            tok_s=tok_s, roofline_fraction=tok_s / roof, roofline_fraction_paired=paired,
                            roofline_tok_s=roof, bytes_per_token=nbytes, bandwidth_gbps=bw_dec,
                            bandwidth_runs=bw_paired[p, var, kv], effective_gbps=tok_s * nbytes / 1e9,
                            attention_s=att_s, attention_share=att_s * tok_s,
                            runs_tok_s=[ndec / t for t in runs[p, var, kv]])
                    row = {"th": th, "what": f"decode ctx {ctx} {p}{label(var, kv)}", "tok_s": tok_s,
                           "frac": r["roofline_fraction"],
                           "extra": f"roofline {roof:.1f} tok/s ({nbytes / 1e6:.0f} MB/token at {bw_dec:.1f} GB/s; "
                                    f"per-run pairs {paired:.0%}); "
                                    f"attention {att_s * 1e3:.1f} ms = {att_s * tok_s:.0%} of a step"}
                    if theirs:
                        row["llama"] = lt
                    results.append(row)
                    print(_fmt_row(row))
            # prefill
            for n in prefills:
                tokens = rng.integers(0, cfg.vocab_size, n)
                pcache = {kv: new_cache(kv, n + 2) for kv in kvs}
                ops = 2 * (P * n + cfg.vocab_size * cfg.dim)
                for kv in kvs:
                    prefill_run(model, pcache[kv], tokens[: min(n, 16)])      # warm-up
                if vs:
                    vs.prefill(min(n, 16))
                vk = [(var, kv) for var in variants for kv in kvs]
                ours_all = {x: [] for x in vk}
                peak_all = {x: [] for x in vk}
                att_all = {x: [] for x in vk}
                their_t = []
                for _ in range(repeat):
                    for var, kv in vk:
                        _native.set_attention_variant(var)
                        ours_all[var, kv].append(prefill_run(model, pcache[kv], tokens))
                        if peak_loop:
                            peak_all[var, kv].append(peak_for(th, ours_all[var, kv][-1]))  # the peak, right after
                        att_all[var, kv].append(prefill_attention_seconds(model, n, rng, kv))
                    if vs:
                        their_t.append(vs.prefill(n))
                for var, kv in vk:
                    ours_t, peak_paired = ours_all[var, kv], peak_all[var, kv]
                    att_s = _median(att_all[var, kv])
                    sec = _median(ours_t)
                    tok_s = n / sec
                    # the int8 peak: the median of the probes run right after each prefill, each as
                    # long as it (as the decode roofline's bandwidth); the start-of-run peak too
                    # (none at the scalar level: no SIMD peak, no fraction)
                    peak_run = _median(peak_paired) if peak_paired else None
                    frac = ops / sec / 1e9 / peak_run if peak_run else None
                    paired = _median([ops / t / 1e9 / pk for t, pk in zip(ours_t, peak_paired)]) if peak_run else None
                    frac_start = ops / sec / 1e9 / peak[th] if th in peak else None
                    rec(threads=th, phase="prefill", attention=var, kv_cache=kv, n_tokens=n, context=0, tok_s=tok_s,
                        roofline_fraction=frac, attention_s=att_s, attention_share=att_s / sec,
                        roofline_fraction_paired=paired, roofline_fraction_start_peak=frac_start,
                        ttft_s=sec, int8_gops=ops / sec / 1e9, peak_gops=peak_run, peak_runs=peak_paired,
                        peak_gops_start=peak.get(th), runs_tok_s=[n / t for t in ours_t])
                    row = {"th": th, "what": f"prefill {n}{label(var, kv)}", "tok_s": tok_s, "frac": frac,
                           "extra": f"TTFT {sec * 1e3:.0f} ms, attention {att_s * 1e3:.0f} ms = {att_s / sec:.0%}, "
                                    f"{ops / sec / 1e9:.0f} int8 GOPS"
                                    + (f" of a {peak_run:.0f} GOPS peak read after each run (per-run pairs {paired:.0%}"
                                       f"; {frac_start:.0%} of the peak at the start)" if peak_run
                                       else " (no SIMD int8 peak at the scalar level)")}
                    if vs:
                        lt = n / _median(their_t)
                        if (var, kv) == vk[0]:
                            rec(engine="llama.cpp", threads=th, phase="prefill", n_tokens=n, context=0, tok_s=lt,
                                roofline_fraction=None, ttft_s=_median(their_t), runs_tok_s=[n / t for t in their_t])
                        row["llama"] = lt
                    results.append(row)
                    print(_fmt_row(row))
            # Python overhead of a decode step, per path
            if not args.no_overhead:
                for p in paths:
                    with _path(model, p):
                        py_s, _ = python_overhead(model, n=8 if quick else 16, repeat=repeat)
                    step = 1 / next(r["tok_s"] for r in records if r.get("phase") == "decode" and r["threads"] == th
                                    and r["engine"] == "ryzjupyter" and r.get("path") == p)
                    rec(threads=th, phase="python_overhead", path=p, seconds_per_token=py_s,
                        fraction_of_step=py_s / step)
                    print(f"  {th} thr: Python overhead per decode token ({p} path) {py_s * 1e3:.2f} ms = "
                          f"{py_s / step:.1%} of a decode step ({step * 1e3:.1f} ms)")
    finally:
        _native.set_num_threads(prev_threads)
        _native.set_attention_variant(prev_variant)
        if vs:
            vs.close()
    peak_run = rss.peak() - pbuf.nbytes                       # not the probe buffer
    del pbuf
    rec(phase="memory", what="measurements", peak_rss_bytes=peak_run)
    print(f"\npeak RSS: {max(peak_run, rss_load_peak) / 2**20:.0f} MiB (loading {rss_load_peak / 2**20:.0f} MiB, "
          f"measurements {peak_run / 2**20:.0f} MiB)")
    if vs:
        print("\n== ratios ryzjupyter / llama.cpp (same run, alternating) ==")
        for row in results:
            if "llama" in row:
                print(f"  {row['th']} thr {row['what']:16s} {row['tok_s']:8.1f} / {row['llama']:8.1f} tok/s = "
                      f"{row['tok_s'] / row['llama']:.2f}x")
    load1 = os.getloadavg()
    meta["load_after"] = load1
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        meta["model"] = {"path": str(args.model or folder), "shape": shape, "lm_head": args.lm_head,
                         "kv_cache": args.kv_cache, "ternary_layout": args.ternary_layout, "ternary_params": P}
        with open(args.json, "w") as f:
            json.dump({**meta, "records": records}, f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0


def _fmt_row(row):
    frac = f"{row['frac']:6.0%}" if row.get("frac") is not None else "     -"
    s = f"  {row['th']} thr {row['what']:16s} {row['tok_s']:8.1f} tok/s  {frac} of roofline  {row['extra']}"
    if "llama" in row:
        s += f"  | llama.cpp {row['llama']:.1f} tok/s ({row['tok_s'] / row['llama']:.2f}x)"
    return s
