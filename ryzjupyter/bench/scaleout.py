"""`python -m ryzjupyter.bench dask`: generate_many on 2 workers against 1 worker, side by side.

    python -m ryzjupyter.bench dask [--model demo] [--prompts 64] [--max-new-tokens 64]
        [--workers 2] [--batch-size 8] [--repeat 3] [--json FILE]

Two LocalClusters run at once: one of a single worker process, one of ``--workers`` worker
processes, every worker with one Dask thread and one kernel thread (RYZ_NUM_THREADS=1). Each loads
the model through ryzjupyter.distributed's worker plugin (a warm-up call), then each run times
``generate_many`` of the same ``--prompts`` distinct prompts (greedy, ``ignore_eos``: every prompt
decodes exactly ``--max-new-tokens`` tokens, in tasks of ``--batch-size`` prompts) on one cluster
and then the other, the order alternating run by run. A figure is the median of ``--repeat`` runs;
the ratio of each run is the one-worker time over the many-worker time of that run. Both clusters'
outputs must be the same tokens, and each worker must have loaded the model exactly once
(``model_loads``); the record says so. The load average before and after is recorded, and the
CPU seconds the workers ran in each run (``time.process_time`` in each worker process): their
ratio to the run's time is the number of cores the workers had on average; on a machine shared
with other work the ratio is bounded by what that work left.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("dask", help="generate_many on a Dask LocalCluster: N single-threaded workers vs one")
    p.add_argument("--model", default="demo", help="model the workers load (default: the bundled demo model)")
    p.add_argument("--prompts", type=int, default=64, help="prompts a run (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens each prompt decodes (default 64)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the second cluster (default 2)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts a task, decoded together (default 8)")
    p.add_argument("--repeat", type=int, default=3, help="runs a figure (median; default 3)")
    p.add_argument("--json", metavar="FILE", help="write the record (and the machine) to FILE")
    p.set_defaults(run=run)
    return p


def bench_prompts(model_name, n) -> list[str]:
    """n distinct prompts: the opening words of lines of the demo model's validation text."""
    from ryzjupyter.models import MODELS_DIR
    lines = [ln.strip() for ln in (MODELS_DIR / "demo" / "validation.txt").read_text().splitlines() if ln.strip()]
    words = list(dict.fromkeys(" ".join(ln.split()[:6]) for ln in lines))
    return [words[i % len(words)] if i < len(words) else f"{i} {words[i % len(words)]}" for i in range(n)]


def run(args) -> int:
    import distributed

    from ryzjupyter import distributed as rd
    from ryzjupyter.bench.probes import machine

    prompts = bench_prompts(args.model, args.prompts)
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=0, ignore_eos=True)
    load_before = list(os.getloadavg())
    clusters = {}
    for n in sorted({1, args.workers}):
        cl = rd.local_cluster(n, threads=1)
        clusters[n] = (cl, distributed.Client(cl, set_as_default=False))
    try:
        for n, (_, c) in clusters.items():        # warm-up: the plugin loads the model on every worker
            rd.generate_many(prompts[:n * 2], model=args.model, client=c, batch_size=1, progress=False, **opts)
        times = {n: [] for n in clusters}
        cpu = {n: [] for n in clusters}           # CPU seconds the workers got in each run
        tokens = {}
        outputs = {}
        for r in range(args.repeat):
            order = sorted(clusters) if r % 2 == 0 else sorted(clusters, reverse=True)
            for n in order:
                c = clusters[n][1]
                cpu0 = sum(c.run(time.process_time).values())
                t0 = time.perf_counter()
                res = rd.generate_many(prompts, model=args.model, client=c, batch_size=args.batch_size,
                                       progress=False, **opts)
                dt = time.perf_counter() - t0
                cpu[n].append(sum(c.run(time.process_time).values()) - cpu0)
                times[n].append(dt)
                tokens[n] = sum(x.stats.n_generated for x in res)
                outputs.setdefault(n, [x.tokens for x in res])
                print(f"  run {r + 1}: {n} worker(s) x 1 thread: {len(prompts)} prompts, {tokens[n]} tokens in "
                      f"{dt:.2f} s ({tokens[n] / dt:.1f} tok/s); the workers ran {cpu[n][-1]:.2f} CPU s "
                      f"({cpu[n][-1] / dt:.2f} cores on average)", flush=True)
        name = rd.ModelPlugin(rd._model_spec(args.model)).name
        loads = {n: sorted(counts.get(name, 0) for counts in rd.model_loads(c).values())
                 for n, (_, c) in clusters.items()}
    finally:
        for cl, c in clusters.values():
            c.close()
            cl.close()
    same = all(o == outputs[1] for o in outputs.values())
    load_after = list(os.getloadavg())
    records = []
    base = statistics.median(times[1])
    print("\n== generate_many, median of runs ==")
    for n in sorted(clusters):
        med = statistics.median(times[n])
        per_run = [a / b for a, b in zip(times[1], times[n])]
        records.append({"kind": "dask_generate", "workers": n, "threads_per_worker": 1, "prompts": len(prompts),
                        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "tokens": tokens[n],
                        "seconds": med, "runs": times[n], "tok_s": tokens[n] / med, "ratio_vs_1": base / med,
                        "ratio_runs": per_run, "model_loads": loads[n], "cpu_s_runs": cpu[n],
                        "cores_runs": [a / b for a, b in zip(cpu[n], times[n])]})
        print(f"  {n} worker(s): {med:.2f} s, {tokens[n] / med:.1f} tok/s, {base / med:.2f}x one worker "
              f"(per run: {', '.join(f'{x:.2f}' for x in per_run)}); model loads per worker: {loads[n]}")
    print(f"  outputs identical on every cluster: {same}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    if args.json:
        doc = {"bench": "dask", "machine": machine(getattr(args, "argv", None)), "model": args.model,
               "repeat": args.repeat, "load_before": load_before, "load_after": load_after,
               "outputs_identical": same, "records": records}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0 if same and all(x == [1] * n for n, x in loads.items()) else 1
