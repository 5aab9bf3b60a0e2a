"""`python -m ryzjupyter.bench serve`: what continuous batching buys, and the server under load.

    python -m ryzjupyter.bench serve [--shape bitnet-2b4t] [--threads 2] [--streams 1,4,8]
        [--decode-tokens 16] [--repeat 3] [--requests 200] [--clients 16] [--json FILE]

1. Batching (docs/performance.md, "Serving"): a random-weight BitNet of the chosen shape (default
   the 2B-4T shapes, ryzjupyter.families.random_bitnet; no download), int8 head, float KV cache.
   For each stream count B, B generations are submitted at once to a Batcher (the server's
   engine) with the same short prompt length, greedy, ``--decode-tokens`` + B - 1 tokens each
   (the prompts are read one chunk a step, so all B decode together for --decode-tokens steps); the
   aggregate decode rate is the tokens of the steps in which all B streams decode together
   divided by those steps' time (from one step's end to the next: the batched forward, the
   sampling of every stream and the emission of its text), the median of ``--repeat`` runs, the
   stream counts alternating within each run. Ratios against B = 1 come from the same run. Then
   one step per B timed in C (layers, head) and the ceiling (step_ceiling): the ratio a step at
   the machine's int8 peak would reach.
2. Load (``--requests`` > 0): ``python -m ryzjupyter serve`` in a child process on 127.0.0.1
   (a free port, the demo model unless ``--load-model``), ``--clients`` threads each with its own
   official openai client, streaming chat and completion requests of distinct prompts (greedy and
   seeded), every answer compared with the engine's own generate() for that prompt alone (none
   lost, none mixed up), time to first token per request (client side: request sent -> first text
   chunk), the server's resident memory after a warm-up round and after the load.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np


def add_parser(sub):
    from ryzjupyter.bench.model import SHAPES
    p = sub.add_parser("serve", help="continuous batching throughput and a load test of the OpenAI server")
    p.add_argument("--shape", default="bitnet-2b4t", choices=sorted(SHAPES), help="random-weight model shape")
    p.add_argument("--model-dir", metavar="DIR", help="where the random model is kept (default $RYZ_BENCH_DIR or "
                   "~/.cache/ryzjupyter/bench)")
    p.add_argument("--threads", type=int, default=2, help="native threads (default 2)")
    p.add_argument("--streams", default="1,4,8", help="concurrent stream counts (default 1,4,8)")
    p.add_argument("--decode-tokens", type=int, default=16, help="tokens each stream generates (default 16)")
    p.add_argument("--prompt-tokens", type=int, default=8, help="prompt length of each stream (default 8)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median; default 3)")
    p.add_argument("--requests", type=int, default=200, help="load test requests (0: no load test; default 200)")
    p.add_argument("--clients", type=int, default=16, help="load test concurrent clients (default 16)")
    p.add_argument("--load-model", default="demo", help="model the load test serves (default: demo)")
    p.add_argument("--json", metavar="FILE", help="write the records (and the machine) to FILE")
    p.set_defaults(run=run)
    return p


# ----------------------------------------------------------------------------
# 1. batching

def batch_rate(model, B, n_prompt, n_new, seed) -> dict:
    """One run with B streams: the aggregate decode tokens/s of the steps where all B decode."""
    from ryzjupyter.decoding.batching import Batcher
    rng = np.random.default_rng(seed)
    marks = []                                                  # (time, decoding streams, tokens so far)

    def on_step(b):
        st = b.stats()
        marks.append((time.perf_counter(), st["decoding"], st["prefilling"], b.tokens))

    b = Batcher(model, max_batch=max(B, 1), on_step=on_step)
    try:
        # stream k starts decoding after k prefill steps: B - 1 extra tokens each give n_new steps
        # in which all B decode
        with model.forward_lock:      # all B queued before the engine runs its first pass
            hs = [b.submit(rng.integers(3, model.vocab_size, n_prompt).tolist(), n_new + B - 1, temperature=0,
                           ignore_eos=True) for _ in range(B)]
        for h in hs:
            h.wait(3600)
    finally:
        b.close()
    # steps whose previous step already had all B streams decoding and no prompt left to read
    t_all = n_all = 0
    for (t0, d0, p0, k0), (t1, d1, p1, k1) in zip(marks, marks[1:]):
        if d0 == B and p0 == 0 and k1 - k0 == B:
            t_all += t1 - t0
            n_all += k1 - k0
    return {"streams": B, "tokens": n_all, "seconds": t_all, "tok_s": n_all / t_all if t_all else 0.0}


def step_breakdown(model, streams, args, rec, calls=3):
    """Where a batched decode step goes: the seconds the layers and the int8 head take in one
    forward_batch of B streams (measured in C), median of `calls`; per token, against B = 1."""
    from ryzjupyter import _native
    from ryzjupyter.families import bitnet_decode
    model.prepare_batching()
    bitnet_decode._plan(model)
    print("\n== one batched decode step, measured in C (median of 3) ==")
    base = None
    steps = []
    t_measure = time.perf_counter()
    for B in streams:
        caches = [model.new_cache(8) for _ in range(B)]
        x0 = np.random.default_rng(B).standard_normal((B, model.config.dim)).astype(np.float32)
        out = np.empty((B, model.config.vocab_size), np.float32)
        lay, head = [], []
        for _ in range(calls):
            ls, hs = _native.bitnet_decode_batch(model._fused_native, x0.copy(), [(c.k, c.v) for c in caches],
                                                 np.zeros(B, np.int64), out)
            lay.append(ls)
            head.append(hs)
        L, H = statistics.median(lay), statistics.median(head)
        base = base or (L, H)
        steps.append(rec(kind="serve_step", shape=args.shape, threads=args.threads, streams=B, layers_s=L,
                         head_s=H, layers_runs=lay, head_runs=head))
        print(f"  {B:2d} streams: layers {L * 1e3:7.1f} ms, head {H * 1e3:6.1f} ms; per token "
              f"{(L + H) / B * 1e3:7.1f} ms = {(base[0] + base[1]) / ((L + H) / B):.2f}x one stream's rate "
              f"(layers {base[0] / (L / B):.2f}x, head {base[1] / (H / B):.2f}x)", flush=True)
    step_ceiling(model, steps, args.threads, time.perf_counter() - t_measure)


def step_ceiling(model, steps, threads, seconds):
    """The most batching can buy on this machine with int8 multiply-adds. A step runs the layers,
    then the head; each phase of B streams' step takes at least that phase of one stream's step
    (every weight read once, as one stream reads it) and at least its B tokens' multiply-adds at the
    int8 peak probed right after the steps, for as long as they took. B x t(1) / the sum of the two
    floors bounds what any kernel of this kind reaches here; recorded in each serve_step record."""
    from ryzjupyter.bench import probes
    from ryzjupyter.bench.model import pass_floor
    peak = probes.peak_for(threads, seconds)
    if not peak or not steps or steps[0]["streams"] != 1:
        return
    l1, h1 = steps[0]["layers_s"], steps[0]["head_s"]
    one = pass_floor(model, 1, l1, h1, peak)
    print(f"\n== the ceiling: int8 peak {peak:.0f} GOPS ({threads} threads, probed right after); a token's "
          f"multiply-adds: layers {one['layer_macs'] / 1e9:.2f} G, head {one['head_macs'] / 1e9:.2f} G ==")
    for r in steps:
        B = r["streams"]
        f = pass_floor(model, B, l1, h1, peak)
        r.update(int8_peak_gops=peak, layer_macs=f["layer_macs"], head_macs=f["head_macs"],
                 compute_floor_s=f["compute_floor_s"], step_floor_s=f["floor_s"], ceiling_vs_1=B * (l1 + h1) / f["floor_s"])
        print(f"  {B:2d} streams: multiply-adds at the peak: layers {f['layers_compute_s'] * 1e3:6.1f} ms, head "
              f"{f['head_compute_s'] * 1e3:5.1f} ms; step at least {f['floor_s'] * 1e3:6.1f} ms; at most "
              f"{r['ceiling_vs_1']:.2f}x one stream (measured {B * (l1 + h1) / (r['layers_s'] + r['head_s']):.2f}x)",
              flush=True)


def run_batching(args, rec):
    from ryzjupyter import _native
    from ryzjupyter.bench import model as bm
    _native.set_num_threads(args.threads)
    folder = bm.random_model_folder(bm.SHAPES[args.shape], args.model_dir)
    t = time.perf_counter()
    model = bm.load_model(folder, lm_head="int8", max_context=max(256, args.prompt_tokens + args.decode_tokens + 8))
    print(f"model {folder.name} loaded in {time.perf_counter() - t:.1f} s; {args.threads} threads")
    streams = [int(s) for s in args.streams.split(",") if s.strip()]
    runs = {B: [] for B in streams}
    batch_rate(model, 1, args.prompt_tokens, 3, seed=0)          # warm-up (repacks, caches, pool)
    for r in range(args.repeat):
        for B in streams:
            res = batch_rate(model, B, args.prompt_tokens, args.decode_tokens, seed=r * 100 + B)
            runs[B].append(res["tok_s"])
            print(f"  run {r + 1}: {B:2d} streams  {res['tok_s']:7.2f} tok/s aggregate "
                  f"({res['tokens']} tokens in {res['seconds']:.2f} s)", flush=True)
    step_breakdown(model, streams, args, rec)
    med = {B: statistics.median(runs[B]) for B in streams}
    base = med.get(1)
    print("\n== aggregate decode tokens/s (median) ==")
    for B in streams:
        ratio = med[B] / base if base else None
        per_run = [x / y for x, y in zip(runs[B], runs[1])] if 1 in runs else []
        rec(kind="serve_batch", shape=args.shape, threads=args.threads, streams=B, tok_s=med[B], runs=runs[B],
            ratio_vs_1=ratio, ratio_runs=per_run, decode_tokens=args.decode_tokens, prompt_tokens=args.prompt_tokens)
        print(f"  {B:2d} streams: {med[B]:7.2f} tok/s" + (f"  = {ratio:.2f}x one stream "
                                                         f"(per run: {', '.join(f'{x:.2f}' for x in per_run)})"
                                                         if ratio else ""))
    return med


# ----------------------------------------------------------------------------
# 2. load test

PROMPT_WORDS = ("Moses", "Aaron", "David", "the king", "Jesus", "Peter", "Paul", "Abraham", "Noah", "the priest",
                "Python", "the function", "a list", "the class", "Samuel", "Joseph", "the people", "Israel",
                "the LORD", "a man", "the woman", "the city", "the river", "the sea", "the mountain")


def load_jobs(model, n):
    """n distinct requests (chat and completion, greedy and seeded) and the text each must get."""
    tok = model.tokenizer
    jobs = []
    for i in range(n):
        word = PROMPT_WORDS[i % len(PROMPT_WORDS)]
        text = f"{i}: And {word} said unto"
        n_new = 8 + (i * 7) % 33
        sampling = {"temperature": 0.0} if i % 3 else {"temperature": 0.8, "seed": 1000 + i}
        if i % 2:
            messages = [{"role": "user", "content": text}]
            ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                             add_special_tokens=False)
            ref = model.new_session().generate(ids, n_new, top_k=0, min_p=0.0, top_p=1.0, **sampling)
            jobs.append({"chat": True, "body": {"messages": messages, "max_tokens": n_new, **sampling},
                         "want": ref.text})
        else:
            ref = model.new_session().generate(text, n_new, top_k=0, min_p=0.0, top_p=1.0, **sampling)
            jobs.append({"chat": False, "body": {"prompt": text, "max_tokens": n_new, **sampling}, "want": ref.text})
    return jobs


def run_clients(url, key, model_name, jobs, clients, timeout=600) -> dict:
    """Run `jobs` from `clients` threads (an openai client each, streaming); returns what came back."""
    import openai
    todo = list(enumerate(jobs))
    lock = threading.Lock()
    results = {}

    def worker():
        c = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=timeout)
        while True:
            with lock:
                if not todo:
                    return
                i, job = todo.pop(0)
            t0 = time.perf_counter()
            first = None
            parts = []
            try:
                if job["chat"]:
                    s = c.chat.completions.create(model=model_name, stream=True, **job["body"])
                    for ch in s:
                        piece = ch.choices[0].delta.content if ch.choices else None
                        if piece:
                            first = first or time.perf_counter()
                            parts.append(piece)
                else:
                    s = c.completions.create(model=model_name, stream=True, **job["body"])
                    for ch in s:
                        piece = ch.choices[0].text if ch.choices else None
                        if piece:
                            first = first or time.perf_counter()
                            parts.append(piece)
                results[i] = {"text": "".join(parts), "ttft": (first or time.perf_counter()) - t0,
                              "latency": time.perf_counter() - t0}
            except Exception as e:              # noqa: BLE001 - a lost request is counted, not raised
                results[i] = {"error": f"{type(e).__name__}: {e}"}

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    wall = time.perf_counter() - t
    lost = [i for i in range(len(jobs)) if i not in results or "error" in results[i]]
    mixed = [i for i in range(len(jobs)) if i in results and "error" not in results[i]
             and results[i]["text"] != jobs[i]["want"]]
    ttft = sorted(r["ttft"] for r in results.values() if "ttft" in r)
    lat = sorted(r["latency"] for r in results.values() if "latency" in r)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None   # noqa: E731 - nearest rank
    return {"requests": len(jobs), "clients": clients, "lost": len(lost), "mixed": len(mixed),
            "errors": [results[i]["error"] for i in lost if i in results][:5], "wall_s": wall,
            "ttft_p50_s": pick(ttft, 0.5), "ttft_p99_s": pick(ttft, 0.99), "latency_p50_s": pick(lat, 0.5),
            "latency_p99_s": pick(lat, 0.99), "req_s": len(jobs) / wall if wall else 0.0}


class ServerProcess:
    """`python -m ryzjupyter serve --port 0` in a child process; its URL, key and resident memory."""

    def __init__(self, model="demo", extra=(), env=None):
        cmd = [sys.executable, "-m", "ryzjupyter", "serve", "--port", "0", "--model", model, *extra]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **(env or {})})
        first = self.p.stdout.readline()
        if " at " not in first:
            self.p.kill()
            raise RuntimeError(f"the server did not start: {first}{self.p.stderr.read()}")
        self.url = first.split(" at ")[-1].strip()
        self.key = self.p.stdout.readline().split("API key: ")[-1].strip()

    def rss(self) -> int:
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def close(self):
        import signal
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()


def load_test(model_name="demo", requests=200, clients=16, warmup=None) -> dict:
    """The whole load test (a child server, warm-up, the load, memory before and after)."""
    import ryzjupyter
    model = ryzjupyter.load(None if model_name == "demo" else model_name)
    jobs = load_jobs(model, requests)
    warm = load_jobs(model, warmup or 2 * clients)
    srv = ServerProcess(model_name)
    try:
        w = run_clients(srv.url, srv.key, model_name, warm, clients)
        if w["lost"] or w["mixed"]:
            raise RuntimeError(f"the warm-up round failed: {w}")
        time.sleep(0.5)
        rss0 = srv.rss()
        res = run_clients(srv.url, srv.key, model_name, jobs, clients)
        time.sleep(0.5)
        rss1 = srv.rss()
        again = run_clients(srv.url, srv.key, model_name, jobs[:clients], clients)   # still serving
    finally:
        srv.close()
    res.update(model=model_name, rss_before=rss0, rss_after=rss1, rss_growth=rss1 - rss0,
               serving_after=again["lost"] == 0 and again["mixed"] == 0)
    return res


# ----------------------------------------------------------------------------

def run(args) -> int:
    from ryzjupyter import _native
    from ryzjupyter.bench import probes
    info = _native.info()
    where = probes.machine(getattr(args, "argv", None))
    load0 = os.getloadavg()
    print(f"machine: {where['cpu']} (family {where['cpu_family']} model {where['cpu_model']}), "
          f"{where['logical_cpus']} logical CPUs, isa {info['isa']}, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    records = []

    def rec(**kw):
        kw.update(load_avg=os.getloadavg()[0])
        records.append(kw)
        return kw

    if args.streams:
        print("\n== continuous batching: aggregate decode ==")
        run_batching(args, rec)
    if args.requests > 0:
        print(f"\n== load test: {args.requests} requests from {args.clients} clients on 127.0.0.1 "
              f"({args.load_model}) ==")
        res = load_test(args.load_model, args.requests, args.clients)
        rec(kind="serve_load", **res)
        mib = 1 / 2 ** 20
        print(f"  lost {res['lost']}, mixed up {res['mixed']}, {res['req_s']:.1f} requests/s, wall {res['wall_s']:.1f} s")
        print(f"  time to first token p50 {res['ttft_p50_s'] * 1e3:.0f} ms, p99 {res['ttft_p99_s'] * 1e3:.0f} ms; "
              f"latency p50 {res['latency_p50_s'] * 1e3:.0f} ms, p99 {res['latency_p99_s'] * 1e3:.0f} ms")
        print(f"  server RSS {res['rss_before'] * mib:.1f} MiB before, {res['rss_after'] * mib:.1f} MiB after "
              f"({res['rss_growth'] * mib:+.1f} MiB); serving after: {res['serving_after']}")
        if res["errors"]:
            print("  errors: " + "; ".join(res["errors"]))
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        meta = {"bench": "serve", "machine": where, "native": {k: info[k] for k in ("isa", "threads", "version")},
                "load_before": load0, "load_after": load1}
        with open(args.json, "w") as f:
            json.dump({**meta, "records": records}, f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0
