"""`python -m ryzjupyter.bench speculative`: what speculative decoding buys on this CPU.

    python -m ryzjupyter.bench speculative [--threads 2] [--repeat 3] [--new-tokens 96]
        [--shape bitnet-2b4t] [--no-shape] [--json FILE]

1. Verify cost (the BitNet-2B-4T shape, a random-weight model, no download; int8 head, float KV
   cache with --context rows filled): the median time of one verify pass over n positions
   (``model.verify``, one batched pass) against one decode step (the fused one-token call), in one
   run, n = 1..16, alternating within each repeat. r(k) = time(verify of k draft tokens, i.e. k + 1
   positions) / time(one decode step).
2. Real text on the bundled models (``demo``, draft model ``demo-draft``), greedy: three prompts
   from the demo's validation text - free continuation of a passage, a grounded rewrite (the
   passage, then its opening again: the reply can copy), repetitive text (one verse several times).
   For each, plain decoding and each drafter (lookup, adjacency, auto, demo-draft), adaptive and
   with fixed k: decode tokens/s (median of --repeat runs, configurations alternating in each run),
   the speedup over plain decoding from the same run, acceptance, tokens per target pass. Every
   speculative reply is checked to equal the plain one.
3. Prediction for the 2B-4T shape: each configuration's measured passes (how many draft tokens
   each decode pass verified) priced with step 1's r(n) and the draft's cost c (one step of a
   random model of a draft shape ~1/20 of the target's parameters over one target step): predicted
   speedup = (tokens - 1) / sum over passes of (r(n + 1) + n c), plain = 1 per token.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

# a draft for the 2B-4T shape: ~1/20 of its parameters (the 128k-token embedding/head included)
DRAFT_SHAPE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=12, num_attention_heads=8,
                   num_key_value_heads=4, vocab_size=128256)
# a draft for any other shape: a quarter of the width, a third of the layers, the same vocabulary
DRAFTERS = ("lookup", "adjacency", "auto", "demo-draft")


def draft_shape_for(shape_name, shape):
    if shape_name == "bitnet-2b4t":
        return DRAFT_SHAPE
    h = max(64, shape["hidden_size"] // 4 // 64 * 64)
    return dict(hidden_size=h, intermediate_size=max(128, shape["intermediate_size"] // 4 // 64 * 64),
                num_hidden_layers=max(1, shape["num_hidden_layers"] // 3), num_attention_heads=max(1, h // 64),
                num_key_value_heads=1, vocab_size=shape["vocab_size"])


def add_parser(sub):
    from ryzjupyter.bench.model import SHAPES
    p = sub.add_parser("speculative", help="speculative decoding: verify cost r(k), acceptance and speedup "
                                           "on real text, the 2B-4T prediction")
    p.add_argument("--shape", default="bitnet-2b4t", choices=sorted(SHAPES), help="target shape for r(k)")
    p.add_argument("--no-shape", action="store_true", help="skip the random-weight shape (steps 1 and 3)")
    p.add_argument("--model-dir", metavar="DIR", help="where random models are kept (default $RYZ_BENCH_DIR or "
                   "~/.cache/ryzjupyter/bench)")
    p.add_argument("--threads", type=int, default=2, help="native threads (default 2)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median; default 3)")
    p.add_argument("--positions", default="1,2,3,4,5,6,8,9,12,16", help="verify positions n to time")
    p.add_argument("--context", type=int, default=64, help="cached tokens before the verify pass (default 64)")
    p.add_argument("--new-tokens", type=int, default=96, help="tokens per reply on the bundled model (default 96)")
    p.add_argument("--ks", default="auto,2,4,8", help="draft lengths: auto (adaptive) and fixed k (default auto,2,4,8)")
    p.add_argument("--model", default="demo", help="bundled target model (default demo)")
    p.add_argument("--price", choices=("wall", "cpu"), default="wall",
                   help="which r(n) prices the 2B-4T prediction: wall-clock medians (default) or CPU time "
                        "(all threads; steadier on a loaded machine)")
    p.add_argument("--json", metavar="FILE", help="write the records (and the machine) to FILE")
    p.set_defaults(run=run)
    return p


# ----------------------------------------------------------------------------
# 1. verify cost

def _filled_cache(model, n):
    c = model.new_cache(n + 32)
    r = np.random.default_rng(0)
    for l in range(c.n_layers):
        c.k[l][:n] = r.standard_normal(c.k[l][:n].shape, dtype=np.float32)
        c.v[l][:n] = r.standard_normal(c.v[l][:n].shape, dtype=np.float32)
    c.append([3] * n)
    return c


def _timed(fn, split):
    """(wall s, CPU s) of fn(); split[...] gets the C-measured seconds of the layers and the head."""
    from ryzjupyter.engine.profiling import PROFILER
    PROFILER.begin()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    t, c = time.perf_counter() - t0, time.process_time() - c0
    ph = PROFILER.end().phases
    split.append((ph.get("layers", 0.0), ph.get("lm_head", 0.0)))
    return t, c


def verify_costs(model, positions, repeat, context):
    """Medians of a verify pass over n positions and of one decode step: wall, CPU time and the
    C-measured split between the layers and the head."""
    cache = _filled_cache(model, context)
    toks = list(range(5, 5 + max(positions)))
    runs = {n: [] for n in positions}
    cpu = {n: [] for n in positions}
    step, step_cpu = [], []
    model.verify(toks[:2], cache)                       # warm: the plan, the I2 repack
    cache.truncate(context)
    split = {n: [] for n in positions}
    step_split = []
    for _ in range(repeat):
        for n in positions:
            t, c = _timed(lambda: model.forward(np.array([7]), cache), step_split)
            step.append(t)
            step_cpu.append(c)
            cache.truncate(context)
            t, c = _timed(lambda: model.verify(toks[:n], cache), split[n])
            runs[n].append(t)
            cpu[n].append(c)
            cache.truncate(context)
    med = {n: statistics.median(v) for n, v in runs.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    med_split = {n: tuple(statistics.median(x) for x in zip(*v)) for n, v in split.items()}
    med_split["step"] = tuple(statistics.median(x) for x in zip(*step_split))
    return med, statistics.median(step), runs, step, med_cpu, statistics.median(step_cpu), med_split


def step_time(model, repeat, context):
    """(wall, CPU time) medians of one decode step."""
    cache = _filled_cache(model, context)
    model.forward(np.array([7]), cache)
    cache.truncate(context)
    ts, cs = [], []
    for _ in range(max(3, repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        model.forward(np.array([7]), cache)
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
        cache.truncate(context)
    return statistics.median(ts), statistics.median(cs)


def verify_floor(model, positions, split, threads, seconds) -> dict | None:
    """The least r(n) can be on this machine with int8 multiply-adds. A pass runs the layers, then
    the head; each phase of a verify pass over n positions takes at least that phase of a decode
    step (it reads the same weights once: split["step"], timed in C) and at least its n tokens'
    multiply-adds at the int8 peak probed right after the measurement, for as long as it took:
    r(n) >= (max(layers, n x layer MACs / peak) + max(head, n x head MACs / peak)) / (layers + head).
    Per n: int8_peak_gops, layer_macs / head_macs (a token's), compute_floor_s (both phases'
    multiply-adds at the peak), ratio_floor. None at the scalar level (no SIMD peak)."""
    from ryzjupyter.bench import probes
    from ryzjupyter.bench.model import pass_floor
    peak = probes.peak_for(threads, seconds)
    sl, sh = split["step"]
    if not peak or not sl + sh:
        return None
    out = {}
    for n in positions:
        f = pass_floor(model, n, sl, sh, peak)
        out[n] = {"int8_peak_gops": peak, "layer_macs": f["layer_macs"], "head_macs": f["head_macs"],
                  "compute_floor_s": f["compute_floor_s"], "ratio_floor": f["floor_s"] / (sl + sh)}
    return out


def ratio_at(r, n):
    """r(n) from the measured positions, linear in between (n = 1: 1)."""
    if n <= 1:
        return 1.0
    keys = sorted(r)
    if n in r:
        return r[n]
    lo = max([k for k in keys if k < n], default=1)
    hi = min([k for k in keys if k > n], default=keys[-1])
    rl = 1.0 if lo == 1 and 1 not in r else r[lo]
    if hi == lo or hi < n:
        return r[keys[-1]] * n / keys[-1]
    return rl + (r[hi] - rl) * (n - lo) / (hi - lo)


def predicted_speedup(pass_sizes, n_generated, r, c):
    """Plain decoding's steps over the speculative passes' cost, both in decode steps."""
    cost = sum(cnt * (ratio_at(r, n + 1) + n * c) for n, cnt in pass_sizes.items())
    return (n_generated - 1) / cost if cost else 0.0


# ----------------------------------------------------------------------------
# 2. real text on the bundled models

def texts(model, new_tokens):
    """(name, prompt) for the free, grounded and repetitive cases, sized to the model's context."""
    from ryzjupyter.models import MODELS_DIR
    tok = model.tokenizer
    val = (MODELS_DIR / "demo" / "validation.txt").read_text()
    paras = [p.strip() for p in val.split("\n") if len(p.strip()) > 200]
    budget = model.max_context - new_tokens - 8
    passage_tokens = max(24, min(400, (budget - 8) // 2))

    def cut(text, n):
        ids = tok.encode(text, add_special_tokens=False)[:n]
        return tok.decode(ids)

    passage = cut(" ".join(paras[3:8]), passage_tokens)
    opening = cut(passage, 12)
    verse = cut(paras[10], 24)
    reps = max(2, min(6, budget // max(1, len(tok.encode(verse)) + 1) - 1))
    return [("free", cut(" ".join(paras[20:24]), passage_tokens)),
            ("grounded", passage + "\n\n" + opening),
            ("repetitive", "\n".join([verse] * reps) + "\n" + cut(verse, 6))]


def run_texts(args, rec, model, r=None, c=None):
    ks = [None if k.strip() == "auto" else int(k) for k in args.ks.split(",")]
    configs = [(None, None)] + [(d, k) for d in DRAFTERS for k in ks]
    out = {}
    for name, prompt in texts(model, args.new_tokens):
        n_prompt = len(model.tokenizer.encode(prompt))
        print(f"\n-- {name} ({n_prompt} prompt tokens, {args.new_tokens} new) --")
        res = {cfg: [] for cfg in configs}
        cpu = {cfg: [] for cfg in configs}                      # CPU seconds of the whole call (prefill included)
        ref = None
        model._adjacency_table = None                       # every text starts with a cold table
        for rep in range(args.repeat):
            for cfg in configs:
                d, k = cfg
                s = model.new_session()
                c0 = time.process_time()
                g = s.generate(prompt, args.new_tokens, temperature=0, ignore_eos=True,
                               **({} if d is None else dict(draft=d, num_draft=k)))
                cpu[cfg].append(time.process_time() - c0)
                if d is None and ref is None:
                    ref = g.tokens
                if g.tokens != ref:
                    raise AssertionError(f"{name}: draft={d} num_draft={k} changed the greedy output")
                res[cfg].append(g.stats)
        base = statistics.median([st.decode_tok_s for st in res[(None, None)]])
        for cfg in configs:
            d, k = cfg
            sts = res[cfg]
            tps = statistics.median([st.decode_tok_s for st in sts])
            per_run = [st.decode_tok_s / b.decode_tok_s for st, b in zip(sts, res[(None, None)])]
            cpu_speedup = statistics.median(cpu[(None, None)]) / statistics.median(cpu[cfg])
            last = sts[-1]
            row = dict(kind="spec_text", text=name, model=args.model, drafter=d or "plain",
                       k="auto" if k is None else k, n_prompt=n_prompt, n_generated=last.n_generated,
                       tok_s=tps, tok_s_runs=[st.decode_tok_s for st in sts], speedup=tps / base,
                       speedup_runs=per_run, cpu_s=cpu[cfg], cpu_speedup=cpu_speedup,
                       drafted=last.drafted, accepted=last.accepted,
                       acceptance=last.acceptance, target_passes=last.target_passes,
                       tokens_per_pass=last.tokens_per_pass, pass_sizes={str(a): b for a, b in last.pass_sizes.items()},
                       draft_s=last.draft_s, verify_s=last.verify_s, sampling_s=last.sampling_s)
            line = (f"  {row['drafter']:>10} k={row['k']!s:>4}: {tps:7.1f} tok/s  {tps / base:5.2f}x "
                    f"(runs {min(per_run):.2f}-{max(per_run):.2f}; CPU time {cpu_speedup:.2f}x)")
            if d is not None:
                line += (f"  accepted {last.accepted:3d}/{last.drafted:<3d} ({last.acceptance:4.0%}), "
                         f"{last.tokens_per_pass:4.2f} tok/pass")
                if r is not None:
                    cc = c if d == "demo-draft" else 0.0
                    row["predicted_2b4t"] = predicted_speedup(last.pass_sizes or {0: last.n_generated - 1},
                                                              last.n_generated, r, cc)
                    line += f"  -> 2B-4T predicted {row['predicted_2b4t']:.2f}x"
            print(line, flush=True)
            rec(**row)
            out[(name, row["drafter"], row["k"])] = row
    return out


def run(args) -> int:
    import ryzjupyter
    from ryzjupyter import _native
    from ryzjupyter.bench import probes
    from ryzjupyter.bench.model import SHAPES, random_model_folder
    _native.set_num_threads(args.threads)
    info = _native.info()
    where = probes.machine(getattr(args, "argv", None))
    load0 = os.getloadavg()
    print(f"machine: {where['cpu']}, {where['logical_cpus']} logical CPUs, isa {info['isa']}, threads "
          f"{args.threads}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    records = []

    def rec(**kw):
        kw.update(load_avg=os.getloadavg()[0])
        records.append(kw)
        return kw

    r = c = None
    if not args.no_shape:
        positions = [int(x) for x in args.positions.split(",")]
        print(f"\n== verify cost at the {args.shape} shape (random weights, int8 head, {args.context} cached "
              f"tokens; median of {args.repeat}) ==")
        folder = random_model_folder(SHAPES[args.shape], args.model_dir)
        target = ryzjupyter.load(str(folder), lm_head="int8", max_context=args.context + 32)
        t_measure = time.perf_counter()
        med, step, runs, steps, med_cpu, step_cpu, split = verify_costs(target, positions, args.repeat, args.context)
        floor = verify_floor(target, positions, split, args.threads, time.perf_counter() - t_measure)
        r = {n: med[n] / step for n in positions}
        r_cpu = {n: med_cpu[n] / step_cpu for n in positions}
        sl, sh = split["step"]
        print(f"  one decode step {step * 1e3:.1f} ms wall, {step_cpu * 1e3:.1f} ms CPU time (all threads); "
              f"in C: layers {sl * 1e3:.1f} ms, head {sh * 1e3:.1f} ms")
        for n in positions:
            vl, vh = split[n]
            print(f"  verify {n:2d} positions ({n - 1:2d} draft tokens): {med[n] * 1e3:7.1f} ms = "
                  f"{r[n]:.2f} x a step (CPU time {r_cpu[n]:.2f} x; layers {vl / sl:.2f} x, head "
                  f"{vh / sh if sh else 0:.2f} x a step's)", flush=True)
            rec(kind="spec_verify", shape=args.shape, threads=args.threads, positions=n, verify_s=med[n],
                step_s=step, ratio=r[n], verify_runs=runs[n], verify_cpu_s=med_cpu[n], step_cpu_s=step_cpu,
                ratio_cpu=r_cpu[n], verify_layers_s=vl, verify_head_s=vh, step_layers_s=sl, step_head_s=sh,
                **(floor[n] if floor else {}))
        rk = {k: ratio_at(r, k + 1) for k in (4, 8)}
        rkc = {k: ratio_at(r_cpu, k + 1) for k in (4, 8)}
        print(f"  r(4) = {rk[4]:.2f} (bar 1.3), r(8) = {rk[8]:.2f} (bar 1.8)  [r(k): k draft tokens, k + 1 "
              f"positions]; in CPU time r(4) = {rkc[4]:.2f}, r(8) = {rkc[8]:.2f}")
        if floor:
            rf = {k: ratio_at({n: f["ratio_floor"] for n, f in floor.items()}, k + 1) for k in (4, 8)}
            print(f"  the floor here (every multiply-add at the int8 peak, {floor[positions[0]]['int8_peak_gops']:.0f} "
                  f"GOPS probed right after): r(4) >= {rf[4]:.2f}, r(8) >= {rf[8]:.2f}")
        if args.price == "cpu":
            r = r_cpu
        del target
        dshape = draft_shape_for(args.shape, SHAPES[args.shape])
        dfolder = random_model_folder(dshape, args.model_dir)
        draft = ryzjupyter.load(str(dfolder), lm_head="int8", max_context=args.context + 32)
        ds, ds_cpu = step_time(draft, args.repeat, args.context)
        c = ds / step if args.price == "wall" else ds_cpu / step_cpu
        print(f"  draft shape {dshape['hidden_size']}x{dshape['num_hidden_layers']} layers: one step "
              f"{ds * 1e3:.1f} ms = c {c:.3f} of a target step")
        rec(kind="spec_draft_cost", shape=args.shape, draft_shape=dshape, threads=args.threads,
            draft_step_s=ds, step_s=step, draft_step_cpu_s=ds_cpu, step_cpu_s=step_cpu, c=c, price=args.price)
        del draft
    print(f"\n== real text: {args.model} (greedy; every reply checked against plain decoding) ==")
    model = ryzjupyter.load(args.model)
    run_texts(args, rec, model, r, c)
    load1 = os.getloadavg()
    print(f"\nload average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        meta = {"bench": "speculative", "machine": where, "native": {k: info[k] for k in ("isa", "threads", "version")},
                "load_before": load0, "load_after": load1}
        with open(args.json, "w") as f:
            json.dump({**meta, "records": records}, f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0
