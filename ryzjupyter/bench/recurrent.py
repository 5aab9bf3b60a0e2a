"""`python -m ryzjupyter.bench recurrent`: Mamba and RWKV-4 at the published models' shapes
(random weights: mamba-130m / 1.4b, RWKV-4 169m / 1.5b) against the machine's read bandwidth.

For each shape a random-weight folder (families/random_recurrent.py, BF16 on disk, kept in
$RYZ_CACHE_DIR/bench-recurrent) is loaded with ``weights="f32"`` (exact) and/or ``"int8"``, and:

  - decode: ``--decode-tokens`` one-token steps (the fused decode, one C call a token) after a
    short prompt, ``--repeat`` runs, median tokens/s; after each run the read bandwidth is probed
    for as long as the run took (a shared machine's bandwidth drifts), and the roofline is that
    bandwidth / the bytes a step must read (every linear's weights, the head, and the state read
    and written: ``bytes_per_token``). roofline_fraction = tokens/s / roofline tokens/s.
  - prefill: ``--prefill`` tokens in one call (chunks of 64), median tokens/s.
  - ``--isa avx2,avx512vnni``: each run measures the ISA levels side by side, alternating them
    (decode, its probe, the next level's decode, its probe, ...), so a shared machine's drift
    falls on both.
  - int8's cost (``--ppl-tokens``, at the small shapes): the f32 model samples a text
    (temperature 1, seeded); the perplexity of that text under f32 and under int8, and the mean
    KL(f32 || int8) of the next-token distributions. (Random weights: the figure measures how
    much int8 moves the model's distribution, not a language-modelling quality.)

llama.cpp is not compared here: llama-cpp-python cannot be installed on this machine (no wheel,
an hour-long source build), so ``vs_llamacpp`` says "not measured here".
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

from ryzjupyter import _native
from ryzjupyter.bench import probes
from ryzjupyter.bench.probes import bandwidth_for
from ryzjupyter.families.random_recurrent import FAMILY_OF_SHAPE, SHAPES, write_folder

NOT_MEASURED = ("not measured here: llama-cpp-python cannot be installed on this machine "
                "(source only, an hour-long build)")


def add_parser(sub):
    p = sub.add_parser("recurrent", help="Mamba / RWKV-4 decode and prefill at real shapes vs the bandwidth roofline")
    p.add_argument("--shapes", default="mamba-130m,rwkv-169m,mamba-1.4b,rwkv-1.5b",
                   help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--weights", default="f32,int8", help="weight formats: f32 (exact), int8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--prefill", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ppl-tokens", type=int, default=192, help="text length for int8's cost (0: skip)")
    p.add_argument("--isa", default="", help="comma list of ISA levels measured side by side (each run "
                   "alternates them; default: the current level)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 tokens: a smoke test")
    p.add_argument("--json", metavar="FILE", help="write the records (for bench report / docs/data)")
    p.set_defaults(run=run)
    return p


def _median(xs):
    return statistics.median(xs)


def bench_folder(shape: str) -> Path:
    root = Path(os.environ.get("RYZ_CACHE_DIR") or Path.home() / ".cache" / "ryzjupyter") / "bench-recurrent"
    folder = root / shape
    if not (folder / "model.safetensors").is_file():
        write_folder(FAMILY_OF_SHAPE[shape], folder, seed=0, dtype="bf16", **SHAPES[shape])
    return folder


def decode_bytes(model) -> int:
    """Bytes one decode step reads: the weights (the embedding only as the head when tied, plus
    one row) and the state, read and written."""
    state = sum(a.nbytes for a in model.fresh_state())
    return int(model.nbytes) + 2 * state


def _decode(model, cache, n, tok=1):
    t0 = time.perf_counter()
    for _ in range(n):
        lg = model.forward(np.asarray([tok]), cache)
        tok = int(lg[0].argmax())
    return time.perf_counter() - t0


def int8_cost(f32_model, int8_model, n, seed=0):
    """(ppl f32, ppl int8, mean KL) on a text the f32 model samples."""
    text = f32_model.new_session().generate([1], max_new_tokens=n, temperature=1.0, seed=seed,
                                            ignore_eos=True).tokens
    ids = np.asarray([1] + text[:-1])
    out = {}
    for name, m in (("f32", f32_model), ("int8", int8_model)):
        lg = m.logits(ids).astype(np.float64)
        lg -= lg.max(-1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
        out[name] = logp
    tgt = np.asarray(text)
    nll = {k: -v[np.arange(len(tgt)), tgt].mean() for k, v in out.items()}
    p = np.exp(out["f32"])
    kl = float((p * (out["f32"] - out["int8"])).sum(-1).mean())
    return float(np.exp(nll["f32"])), float(np.exp(nll["int8"])), kl, len(tgt)


def run(args) -> int:
    import ryzjupyter
    quick = args.quick
    shapes = [s for s in args.shapes.split(",") if s]
    formats = [f for f in args.weights.split(",") if f]
    threads_list = [int(t) for t in args.threads.split(",") if t]
    ndec, repeat = (2, 1) if quick else (args.decode_tokens, args.repeat)
    info = _native.info()
    isas = [i for i in (getattr(args, "isa", "") or "").split(",") if i] or [info["isa"]]
    for isa in isas:
        if isa not in info["supported_isas"]:
            raise SystemExit(f"bench recurrent: ISA level {isa!r} is not supported here "
                             f"(this CPU runs {', '.join(info['supported_isas'])})")
    load0 = os.getloadavg()
    print(f"machine: {probes.cpu_model()}, {os.cpu_count()} logical CPUs, isa {info['isa']}, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    records = []
    meta = {"bench": "recurrent", "machine": probes.machine(getattr(args, "argv", None)),
            "native": {k: info[k] for k in ("isa", "threads", "version")}, "load_before": load0,
            "repeat": repeat, "vs_llamacpp": NOT_MEASURED, "isas": isas}

    def rec(**kw):
        kw.update(load_avg=os.getloadavg()[0])
        records.append(kw)
        return kw

    for th in threads_list:
        bw, runs = probes.measure_bandwidth(32 if quick else 512, th, repeat)
        rec(phase="read_bandwidth", threads=th, gbps=bw, runs=runs)
        print(f"  {th} thr: read bandwidth {bw:6.1f} GB/s")
    pbuf = np.ones((8 if quick else 256) << 20, np.uint8)
    prev = _native.get_num_threads()
    try:
        for shape in shapes:
            if quick:
                import tempfile
                folder = write_folder(FAMILY_OF_SHAPE[shape], Path(tempfile.mkdtemp()) / shape, dtype="bf16",
                                      hidden_size=64, num_hidden_layers=2, vocab_size=512)
            else:
                folder = bench_folder(shape)
            loaded = {}
            for fmt in formats:
                t0 = time.perf_counter()
                m = ryzjupyter.load(str(folder), weights=fmt)
                load_s = time.perf_counter() - t0
                loaded[fmt] = m
                nbytes = decode_bytes(m)
                print(f"\n== {shape} ({m.family}) {fmt}: {m.nbytes / 2**30:.2f} GiB weights, "
                      f"{nbytes / 1e6:.0f} MB a decode step, loaded in {load_s:.1f} s ==")
                for th in threads_list:
                    _native.set_num_threads(th)
                    caches, times, bws = {}, {i: [] for i in isas}, {i: [] for i in isas}
                    for isa in isas:
                        _native.set_isa(isa)
                        caches[isa] = m.new_cache(4 + ndec * (repeat + 1) + 8)
                        m.forward(np.arange(1, 5), caches[isa])
                        _decode(m, caches[isa], 1)                     # warm-up (builds the plan)
                    for _ in range(repeat):                            # the ISA levels alternate
                        for isa in isas:
                            _native.set_isa(isa)
                            t = _decode(m, caches[isa], ndec)
                            times[isa].append(t)
                            bws[isa].append(bandwidth_for(pbuf, th, t))
                    for isa in isas:
                        tok_s = ndec / _median(times[isa])
                        bw = _median(bws[isa])
                        roof = bw * 1e9 / nbytes
                        r = rec(shape=shape, family=m.family, weights=fmt, threads=th, isa=isa, phase="decode",
                                n_tokens=ndec, tok_s=tok_s, runs_tok_s=[ndec / t for t in times[isa]],
                                bytes_per_token=nbytes, bandwidth_gbps=bw, bandwidth_runs=bws[isa],
                                roofline_tok_s=roof, roofline_fraction=tok_s / roof,
                                effective_gbps=tok_s * nbytes / 1e9, vs_llamacpp=NOT_MEASURED)
                        print(f"  {th} thr {isa:10s} decode  {tok_s:8.2f} tok/s  {r['roofline_fraction']:5.0%} of "
                              f"roofline ({roof:.2f} tok/s at {bw:.1f} GB/s)")
                    n = 16 if quick else args.prefill
                    pt = {i: [] for i in isas}
                    for _ in range(repeat):
                        for isa in isas:
                            _native.set_isa(isa)
                            c = m.new_cache(n + 2)
                            t0 = time.perf_counter()
                            m.forward(np.arange(n) % m.vocab_size, c)
                            pt[isa].append(time.perf_counter() - t0)
                    for isa in isas:
                        ptok = n / _median(pt[isa])
                        rec(shape=shape, family=m.family, weights=fmt, threads=th, isa=isa, phase="prefill",
                            n_tokens=n, tok_s=ptok, runs_tok_s=[n / t for t in pt[isa]], vs_llamacpp=NOT_MEASURED)
                        print(f"  {th} thr {isa:10s} prefill {ptok:8.2f} tok/s ({n} tokens)")
                    _native.set_isa(info["isa"])
            if "f32" in loaded and "int8" in loaded and args.ppl_tokens and (quick or shape in ("mamba-130m",
                                                                                                "rwkv-169m")):
                _native.set_num_threads(max(threads_list))
                p32, p8, kl, n = int8_cost(loaded["f32"], loaded["int8"], 8 if quick else args.ppl_tokens)
                rec(shape=shape, family=loaded["f32"].family, phase="int8_cost", n_tokens=n, ppl_f32=p32,
                    ppl_int8=p8, ppl_ratio=p8 / p32, kl_mean=kl)
                print(f"  int8 cost: perplexity {p32:.3f} -> {p8:.3f} ({p8 / p32 - 1:+.2%}), mean KL {kl:.4f} "
                      f"nats over {n} sampled tokens")
            loaded.clear()
    finally:
        _native.set_num_threads(prev)
        _native.set_isa(info["isa"])
    if args.json:
        import json
        meta["load_after"] = os.getloadavg()
        Path(args.json).write_text(json.dumps({**meta, "records": records}, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0
