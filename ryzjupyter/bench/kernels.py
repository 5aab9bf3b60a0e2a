"""`python -m ryzjupyter.bench kernels`: the ternary kernels against this machine's limits.

1. Limits, measured here (``ryzjupyter.bench.probes``): streaming read bandwidth (C loop of the
   widest loads the CPU has over a buffer >= 1 GiB, 1 and 2 threads) and the int8 compute peak
   of the ISA level in use (register-only loop in the instruction sequence of that level's
   ternary kernels: vpdpbusd on avx512vnni, vpmaddubsw + vpmaddwd on avx2; none at scalar;
   GOPS = 2 x MACs).
2. Decode (GEMV, M = 1): ``ternary_linear_i2`` called the way a model calls it, one pass
   over a set of BitNet-2B-4T-shaped packed matrices far larger than L3 (copies of each
   shape totalling ``--gemv-mib``, and the 30-layer mix of q,k,v,o,gate,up,down = one
   token of the 2B-4T ternary weights), so every byte comes from DRAM. The matrices live
   where TernaryWeight puts them (``ternary.packed_empty``: huge-page-backed arena). GB/s = packed
   bytes / time, as a fraction of the measured read bandwidth.
3. The decode lm_head (128256 x 2560): the int8 head (``lm_head_i8``) and the optional int4 head
   (``lm_head_i4``, head4.h) alternating, GB/s as a fraction of a
   read probe taken in the same round (``--no-lm-head`` skips it).
4. Prefill (GEMM, M = 128 and 512): GOPS = 2 M N K / time, as a fraction of the int8 peak.
5. I2 vs T5 (5 trits a byte, 1.6 bpw): the model pass and the prefill GEMMs in both layouts,
   run alternately (I2, T5, I2, T5, ...) so both see the same machine; medians and the
   median of the per-round time ratios T5 / I2.
Each figure is the median of ``--repeat`` runs; the best run is recorded too (``best``),
because on a shared machine a run that lost its core to another process says nothing
about the kernel. The report prints the load average before and after.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

from ryzjupyter import _native
from ryzjupyter.bench import probes
from ryzjupyter.bench.probes import measure_bandwidth, measure_int8_peak
from ryzjupyter.engine.ternary import packed_empty

# BitNet-b1.58-2B-4T linear shapes (N x K) and how often each occurs in a layer
SHAPES_2B4T = [("attn q/o 2560x2560", 2560, 2560, 2), ("attn k/v 640x2560", 640, 2560, 2),
               ("ffn gate/up 6912x2560", 6912, 2560, 2), ("ffn down 2560x6912", 2560, 6912, 1)]
LAYERS_2B4T = 30


def add_parser(sub):
    p = sub.add_parser("kernels", help="ternary kernels vs measured bandwidth and int8 peak")
    p.add_argument("--json", metavar="FILE", help="write one JSON record per measurement")
    p.add_argument("--repeat", type=int, default=7, help="runs per figure (median); default 7")
    p.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    p.add_argument("--bw-mib", type=int, default=1024, help="bandwidth probe buffer (MiB)")
    p.add_argument("--gemv-mib", type=int, default=512, help="GEMV weight set per shape (MiB)")
    p.add_argument("--gemm-m", default="128,512", help="GEMM token counts")
    p.add_argument("--no-model-pass", action="store_true", help="skip the 30-layer 2B-4T pass")
    p.add_argument("--no-lm-head", action="store_true", help="skip the int8 vs int4 lm_head GEMV")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests), not meaningful")
    p.set_defaults(run=run)
    return p


def _median_time(fn, repeat):
    fn()  # warm up (page faults, thread start)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _random_packed(rng, N, K):
    rb = _native.i2_row_bytes(K)
    codes = rng.integers(0, 3, (4, N, rb), dtype=np.uint8)
    return (codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6).astype(np.uint8)


# the 243 valid T5 bytes (ternary.h: ceil(256 v / 243), v = 0..242)
_T5_BYTES = ((256 * np.arange(243) + 242) // 243).astype(np.uint8)


def _random_packed_t5(rng, N, K):
    return _T5_BYTES[rng.integers(0, 243, (N, _native.t5_row_bytes(K)), dtype=np.uint8)]


def _alternate(fns, repeat):
    """Run the callables in turn, repeat rounds (after one warm-up round): per-callable
    lists of seconds, taken side by side so a change of machine load hits all alike."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for f, ts in zip(fns, times):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return times


def _in_arena(a):
    """A copy placed where TernaryWeight puts packed weights (huge-page-backed arena)."""
    out = packed_empty(*a.shape)
    out[...] = a
    return out


def _lm_head_section(args, quick, repeat, threads_list, rng, rec):
    """The decode lm_head at 2B-4T shape (128256 x 2560): lm_head_i8 (int8 + f32 row scales) and
    lm_head_i4 (int4 groups of 32 + float16 scales), alternating, each round next to a read
    probe of about the same size (the fraction is per round: a shared machine drifts)."""
    from ryzjupyter.families.bitnet import quantize_head4
    V, D = (1024, 256) if quick else (128256, 2560)
    print(f"\n== decode: lm_head GEMV {V}x{D}, int8 (lm_head_i8) vs int4 (lm_head_i4), alternating ==")
    w = rng.standard_normal((V, D), dtype=np.float32) * np.float32(0.02)
    hq, hs = np.empty((V, D), np.int8), np.empty(V, np.float32)
    _native.quantize_rows_i8(hq, hs, w)
    p4, s4 = quantize_head4(w)
    del w
    xq = rng.integers(-127, 128, (1, D), dtype=np.int8)
    xsc, out = np.ones(1, np.float32), np.empty((1, V), np.float32)
    heads = {"int8": (lambda: _native.lm_head_i8(out, xq, xsc, hq, hs), hq.nbytes + hs.nbytes),
             "int4": (lambda: _native.lm_head_i4(out, xq, xsc, p4, s4), p4.nbytes + s4.nbytes)}
    pbuf = np.ones((8 if quick else 256) << 20, np.uint8)
    for th in threads_list:
        _native.set_num_threads(th)
        gb, frac, probe_gbps = {k: [] for k in heads}, {k: [] for k in heads}, []
        for _ in range(3 * repeat):
            probe_gbps.append(probes.read_gbps(pbuf, th))
            for k, (fn, nbytes) in heads.items():
                t0 = time.perf_counter()
                fn()
                g = nbytes / (time.perf_counter() - t0) / 1e9
                gb[k].append(g)
                frac[k].append(g / probe_gbps[-1])
        for k, (_, nbytes) in heads.items():
            med = statistics.median(gb[k])
            r = rec(kind="lm_head_gemv", format=k, V=V, D=D, M=1, threads=th, bytes=nbytes,
                    seconds=nbytes / med / 1e9, gbps=med, best=max(gb[k]), probe_gbps=statistics.median(probe_gbps),
                    frac_bw=statistics.median(frac[k]), runs=gb[k])
            print(f"  lm_head {k}  {th} thr {nbytes / 1e6:6.1f} MB  {med:6.1f} GB/s (best {max(gb[k]):.1f}) "
                  f"{r['seconds'] * 1e3:6.2f} ms  {r['frac_bw']:4.0%} of the probe next to it "
                  f"(probe median {r['probe_gbps']:.1f} GB/s)")


def run(args) -> int:
    quick = args.quick
    repeat = max(1, 1 if quick else args.repeat)
    threads_list = [int(t) for t in args.threads.split(",") if t.strip()]
    gemm_ms = [int(m) for m in args.gemm_m.split(",") if m.strip()]
    bw_mib = 32 if quick else args.bw_mib
    gemv_mib = 8 if quick else args.gemv_mib
    # --quick (tests): every shape 256 x 256, labelled as such (not with the 2B-4T names)
    shapes = ([(f"quick {n.rsplit(' ', 1)[0]} 256x256", 256, 256, c) for n, N, K, c in SHAPES_2B4T] if quick
              else list(SHAPES_2B4T))
    if quick:
        gemm_ms = [4]
    info = _native.info()
    peak_loop = probes.int8_peak_loop()
    records = []
    prev_threads = _native.get_num_threads()
    load = os.getloadavg()
    print(f"machine: {probes.cpu_model()}, {os.cpu_count()} logical CPUs, isa {info['isa']}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"repeats: {repeat} (median)  threads: {threads_list}")
    rng = np.random.default_rng(0)

    def rec(**kw):
        kw.update(isa=info["isa"], repeat=repeat)
        records.append(kw)
        return kw

    try:
        bw, bwbest, peak = {}, {}, {}
        print(f"\n== machine limits (read loop: {probes.read_loop()}) ==")
        for th in threads_list:
            bw[th], runs = measure_bandwidth(bw_mib, th, repeat)
            bwbest[th] = max(runs)
            rec(kind="read_bandwidth", threads=th, bytes=bw_mib << 20, gbps=bw[th], best=max(runs),
                runs=runs)
            print(f"  read bandwidth, {th} thr, {bw_mib} MiB buffer: {bw[th]:6.1f} GB/s "
                  f"(best {max(runs):.1f})")
            if peak_loop:
                peak[th], runs = measure_int8_peak(th, repeat, 20_000 if quick else probes.INT8_ITERS)
                rec(kind="int8_peak", threads=th, level=info["isa"], loop=peak_loop, gops=peak[th],
                    best=max(runs), runs=runs)
                print(f"  int8 peak ({info['isa']}), {th} thr: {peak[th]:7.1f} GOPS (2 ops per MAC; "
                      f"best {max(runs):.1f}); loop {peak_loop}")
            elif th == threads_list[0]:
                print("  int8 peak: none at the scalar level (no SIMD int8 peak; GEMM fractions not given)")

        print("\n== decode: ternary GEMV (M=1, ternary_linear_i2), weights streamed from DRAM ==")
        print(f"  {'shape (N x K)':24s} {'thr':>3s} {'GB/s':>7s} {'of BW':>6s} {'us/mat':>8s}"
              f" {'best GB/s':>9s} {'of best BW':>10s}")
        for name, N, K, _ in shapes:
            one = _random_packed(rng, N, K)
            copies = max(2, (gemv_mib << 20) // one.nbytes)
            mats = [_in_arena(one) for _ in range(copies)]
            x = rng.standard_normal((1, K)).astype(np.float32)
            out = np.empty((1, N), np.float32)
            lin = _native.ternary_linear_i2

            def gemv_pass():
                for p in mats:
                    lin(out, p, x, 1.0)
            total = one.nbytes * copies
            for th in threads_list:
                _native.set_num_threads(th)
                med, runs = _median_time(gemv_pass, repeat)
                gbps = total / med / 1e9
                best = total / min(runs) / 1e9
                r = rec(kind="gemv", shape=name, N=N, K=K, M=1, threads=th, layout="i2", copies=copies,
                        bytes=total, seconds=med, gbps=gbps, frac_bw=gbps / bw[th], best=best,
                        frac_best_bw=best / bwbest[th], runs=[total / t / 1e9 for t in runs])
                print(f"  {name:24s} {th:3d} {gbps:7.1f} {r['frac_bw']:6.0%} {med / copies * 1e6:8.1f}"
                      f" {best:9.1f} {r['frac_best_bw']:10.0%}")
            del mats

        if not args.no_model_pass:
            layer = [s for s in shapes for _ in range(s[3])]
            mats = [(_in_arena(_random_packed(rng, N, K)), N, K) for _ in range(1 if quick else LAYERS_2B4T)
                    for _, N, K, _ in layer]
            xs = {K: rng.standard_normal((1, K)).astype(np.float32) for _, _, K, _ in shapes}
            outs = {N: np.empty((1, N), np.float32) for _, N, _, _ in shapes}
            total = sum(p.nbytes for p, _, _ in mats)
            lin = _native.ternary_linear_i2

            def model_pass():
                for p, N, K in mats:
                    lin(outs[N], p, xs[K], 1.0)
            for th in threads_list:
                _native.set_num_threads(th)
                med, runs = _median_time(model_pass, repeat)
                gbps = total / med / 1e9
                best = total / min(runs) / 1e9
                r = rec(kind="gemv_model_pass", shape="2B-4T 30 layers x (q,k,v,o,gate,up,down)",
                        M=1, threads=th, layout="i2", matrices=len(mats), bytes=total, seconds=med,
                        gbps=gbps, frac_bw=gbps / bw[th], best=best, frac_best_bw=best / bwbest[th],
                        runs=[total / t / 1e9 for t in runs])
                print(f"  {'2B-4T model pass':24s} {th:3d} {gbps:7.1f} {r['frac_bw']:6.0%} "
                      f"{med * 1e3:7.2f} ms/token ({total / 2**20:.0f} MiB), best {best:.1f} GB/s "
                      f"= {r['frac_best_bw']:.0%} of best BW")
            del mats

        if not args.no_lm_head:
            _lm_head_section(args, quick, repeat, threads_list, rng, rec)

        print("\n== prefill: ternary GEMM (ternary_linear_i2) ==")
        print(f"  {'shape (N x K)':24s} {'M':>4s} {'thr':>3s} {'GOPS':>7s} {'of peak':>7s} {'ms':>8s}"
              f" {'best GOPS':>9s} {'of peak':>7s}")
        for name, N, K, _ in shapes:
            p = _random_packed(rng, N, K)
            for M in gemm_ms:
                x = rng.standard_normal((M, K)).astype(np.float32)
                out = np.empty((M, N), np.float32)
                for th in threads_list:
                    _native.set_num_threads(th)
                    med, runs = _median_time(lambda: _native.ternary_linear_i2(out, p, x, 1.0), repeat)
                    gops = 2 * M * N * K / med / 1e9
                    frac = gops / peak[th] if th in peak else None
                    best = 2 * M * N * K / min(runs) / 1e9
                    bfrac = best / peak[th] if th in peak else None
                    rec(kind="gemm", shape=name, N=N, K=K, M=M, threads=th, layout="i2", seconds=med,
                        gops=gops, frac_peak=frac, best=best, frac_best_peak=bfrac,
                        runs=[2 * M * N * K / t / 1e9 for t in runs])
                    fs = f"{frac:7.0%}" if frac is not None else "      -"
                    bfs = f"{bfrac:7.0%}" if bfrac is not None else "      -"
                    print(f"  {name:24s} {M:4d} {th:3d} {gops:7.1f} {fs} {med * 1e3:8.2f} {best:9.1f} {bfs}")

        print("\n== layouts: I2 vs T5 (5 trits a byte), alternating runs ==")
        if not args.no_model_pass:
            layer = [s for s in shapes for _ in range(s[3])]
            nl = 1 if quick else LAYERS_2B4T
            packers = {"i2": _random_packed, "t5": _random_packed_t5}
            lin = {lay: getattr(_native, f"ternary_linear_{lay}") for lay in packers}
            mats = {lay: [(_in_arena(pk(rng, N, K)), N, K) for _ in range(nl) for _, N, K, _ in layer]
                    for lay, pk in packers.items()}
            xs = {K: rng.standard_normal((1, K)).astype(np.float32) for _, _, K, _ in shapes}
            outs = {N: np.empty((1, N), np.float32) for _, N, _, _ in shapes}

            def model_pass_of(lay):
                def f():
                    for p, N, K in mats[lay]:
                        lin[lay](outs[N], p, xs[K], 1.0)
                return f
            for th in threads_list:
                _native.set_num_threads(th)
                ti2, tt5 = _alternate([model_pass_of("i2"), model_pass_of("t5")], max(repeat, 5))
                ratio = statistics.median(b / a for a, b in zip(ti2, tt5))
                for lay, ts in (("i2", ti2), ("t5", tt5)):
                    total = sum(p.nbytes for p, _, _ in mats[lay])
                    med = statistics.median(ts)
                    rec(kind="layout_model_pass", layout=lay, M=1, threads=th, bytes=total,
                        seconds=med, gbps=total / med / 1e9, best=total / min(ts) / 1e9,
                        t5_over_i2=ratio, runs=ts)
                    print(f"  {lay:3s} 2B-4T model pass       {th:3d} thr {med * 1e3:7.2f} ms/token "
                          f"({total / 2**20:.0f} MiB, {total / med / 1e9:.1f} GB/s)")
                print(f"      T5 / I2 time, median of per-round ratios: {ratio:.3f}")
            del mats
        for name, N, K, _ in shapes:
            t = rng.integers(-1, 2, (N, K), dtype=np.int8)
            ps = {}
            for lay in ("i2", "t5"):
                ps[lay] = np.empty((N, getattr(_native, f"{lay}_row_bytes")(K)), np.uint8)
                getattr(_native, f"pack_{lay}")(ps[lay], t)
            for M in gemm_ms:
                x = rng.standard_normal((M, K)).astype(np.float32)
                out = np.empty((M, N), np.float32)
                for th in threads_list:
                    _native.set_num_threads(th)
                    ti2, tt5 = _alternate([lambda: _native.ternary_linear_i2(out, ps["i2"], x, 1.0),
                                           lambda: _native.ternary_linear_t5(out, ps["t5"], x, 1.0)], repeat)
                    ratio = statistics.median(b / a for a, b in zip(ti2, tt5))
                    g = [2 * M * N * K / statistics.median(ts) / 1e9 for ts in (ti2, tt5)]
                    for lay, ts, gops in (("i2", ti2, g[0]), ("t5", tt5, g[1])):
                        rec(kind="layout_gemm", shape=name, N=N, K=K, M=M, threads=th, layout=lay,
                            seconds=statistics.median(ts), gops=gops, t5_over_i2=ratio, runs=ts)
                    print(f"  GEMM {name:24s} M={M:4d} {th:d} thr: I2 {g[0]:7.1f} GOPS, T5 {g[1]:7.1f} GOPS,"
                          f" T5 / I2 time {ratio:.3f}")

        print("\n== layouts: I2 vs TL vs T5, L3-resident, M=1 ==")
        name, N, K, _ = shapes[0]
        t = rng.integers(-1, 2, (N, K), dtype=np.int8)
        x = rng.standard_normal((1, K)).astype(np.float32)
        out = np.empty((1, N), np.float32)
        for lay in ("i2", "tl", "t5"):
            p = np.empty((N, getattr(_native, f"{lay}_row_bytes")(K)), np.uint8)
            getattr(_native, f"pack_{lay}")(p, t)
            fn = getattr(_native, f"ternary_linear_{lay}")
            for th in threads_list:
                _native.set_num_threads(th)
                med, runs = _median_time(lambda: fn(out, p, x, 1.0), repeat)
                rec(kind="layout_gemv", shape=name, N=N, K=K, M=1, threads=th, layout=lay,
                    seconds=med, gbps=p.nbytes / med / 1e9)
                print(f"  {lay:3s} {name:24s} {th:3d} thr {med * 1e6:9.1f} us")
    finally:
        _native.set_num_threads(prev_threads)

    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "kernels", "machine": probes.machine(getattr(args, "argv", None)),
                       "native": {k: info[k] for k in ("isa", "threads", "version")},
                       "records": records}, f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0
