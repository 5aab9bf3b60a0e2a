"""`python -m ryzjupyter.bench report FILE.json [FILE.json ...]`: the markdown tables of bench records.

The figures in docs/ are this command's output on the records committed in docs/data/ (written by
the benches' ``--json``). A page embeds them between two markers:

    <!-- bench report: docs/data/NAME.json [more files] -->

    ...the output of `python -m ryzjupyter.bench report docs/data/NAME.json`...
    <!-- end bench report -->

and tests/test_docs_figures.py checks each block against a fresh rendering, so a page's figures
are exactly its records'. ``report --update PAGE.md`` rewrites a page's blocks in place. One file of ``bench kernels`` or ``bench model``, or any number of
``bench ppl`` files (one table, each row against the first file's perplexity).
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

BLOCK_START = re.compile(r"<!-- bench report: (?P<files>[^>]+?) -->\n\n")
BLOCK_END = "<!-- end bench report -->"


def add_parser(sub):
    p = sub.add_parser("report", help="markdown tables of --json bench records (what docs/ shows)")
    p.add_argument("files", nargs="*", metavar="FILE.json")
    p.add_argument("--update", nargs="+", metavar="PAGE.md",
                   help="rewrite every report block of these pages from the records it names")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    for page in args.update or []:
        n = update(Path(page))
        print(f"{page}: {n} report block(s) rewritten")
    if args.files:
        print(render([Path(f) for f in args.files]), end="")
    elif not args.update:
        raise SystemExit("report: give record files, or --update PAGE.md")
    return 0


def update(page: Path, root: Path | None = None) -> int:
    """Rewrite each report block of ``page`` from its records (paths relative to ``root``,
    default the current folder); returns the number of blocks."""
    root = Path.cwd() if root is None else root
    text = page.read_text()
    out, pos, n = [], 0, 0
    for m in BLOCK_START.finditer(text):
        end = text.find(BLOCK_END, m.end())
        if end < 0:
            raise ValueError(f"{page}: a bench report block for {m['files']} has no end marker")
        out += [text[pos:m.end()], render([root / f for f in m["files"].split()])]
        pos, n = end, n + 1
    page.write_text("".join(out) + text[pos:])
    return n


# ---- formatting helpers --------------------------------------------------------------------------

def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}".replace("%", " %")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _commit(m: dict) -> str:
    c = m.get("commit") or "unknown"
    return c[:12] + ("-dirty" if c.endswith("-dirty") else "")


def _machine_lines(d: dict) -> list[str]:
    m = d["machine"]
    fam = (f" (family {m['cpu_family']}, model {m['cpu_model']})" if m.get("cpu_family") is not None else "")
    hyp = ", under a hypervisor" if m.get("hypervisor") else ""
    loops = m.get("probe_loops") or {}
    peak = loops.get("int8")
    lines = [f"- Machine: {m['cpu']}{fam}{hyp}, {m['logical_cpus']} logical CPUs "
             f"({m['physical_cores']} cores); ISA level **{m['isa']}** "
             f"(the CPU has: {', '.join(m['supported_isas'])})."]
    if "repeat" in d or "load_before" in d:
        run = f"- Run: {m['date']}, commit `{_commit(m)}`"
        if "load_before" in d:
            run += f", load average {d['load_before'][0]:.2f} before / {d['load_after'][0]:.2f} after"
        if d.get("repeat"):
            run += f", {d['repeat']} runs a figure (medians)"
        lines.append(run + ".")
        lines.append(f"- Probes: read loop `{loops.get('read')}`; int8 peak loop: "
                     + (f"`{peak}`." if peak else "none (no SIMD int8 peak at the scalar level)."))
    else:
        lines.append(f"- Run: {m['date']}, commit `{_commit(m)}`.")
    if m.get("command"):
        lines.append(f"- Command: `{m['command']}`")
    return lines


def _limits(bw: dict, peak: dict, level: str) -> list[str]:
    return _table(["threads", "read bandwidth GB/s (median)", f"int8 peak GOPS, {level} (median)"],
                  [[th, f"{bw[th]:.1f}", f"{peak[th]:.0f}" if th in peak else "-"] for th in sorted(bw)])


# ---- bench model ---------------------------------------------------------------------------------

def model_tables(d: dict) -> str:
    R = d["records"]
    level = d["native"]["isa"]
    bw = {r["threads"]: r["gbps"] for r in R if r["phase"] == "read_bandwidth"}
    peak = {r["threads"]: r["gops"] for r in R if r["phase"] == "int8_peak"}
    theirs = {(r["threads"], r["phase"], r["n_tokens"], r["context"]): r
              for r in R if r.get("engine") == "llama.cpp"}
    ours = [r for r in R if r.get("engine") == "ryzjupyter"]
    m = d.get("model") or {}
    shape = m.get("shape") or {}
    out = _machine_lines(d)
    desc = (f"- Model: random-weight BitNet b1.58, hidden {shape['hidden_size']}, {shape['num_hidden_layers']} "
            f"layers, vocab {shape['vocab_size']} ({m['ternary_params'] / 1e9:.3f} G ternary weights)"
            if shape else f"- Model: `{m.get('path')}`")
    desc += (f"; lm_head {m.get('lm_head')}, KV cache {m.get('kv_cache', 'f32')}, ternary layout "
             f"{m.get('ternary_layout', 'auto')}.")
    out.append(desc)
    if d.get("llamacpp"):
        out.append(f"- llama.cpp: {d['llamacpp']}; timed alternately with ryzjupyter in the same command.")
    out += ["", *_limits(bw, peak, level), ""]

    dec = [r for r in ours if r["phase"] == "decode"]
    # attention variants (bench model --attention tiled,units): a column when several were timed
    variants = sorted({r.get("attention", "tiled") for r in ours if r["phase"] in ("decode", "prefill")}) or ["tiled"]
    vcol = ["attention"] if len(variants) > 1 else []

    # KV cache formats (bench model --kv-cache f32,f16,bf16): a column when several were timed
    kv_order = [k for k in str(m.get("kv_cache", "f32")).split(",") if k]

    def kv_of(r):
        return r.get("kv_cache") or kv_order[0]
    kvs = [k for k in kv_order if any(kv_of(r) == k for r in ours if r["phase"] in ("decode", "prefill"))] or ["f32"]
    kcol = ["KV cache"] if len(kvs) > 1 else []

    def vcell(r):
        return ([r.get("attention", "tiled")] if vcol else []) + ([kv_of(r)] if kcol else [])
    vcol_all = vcol + kcol
    if dec:
        out.append(f"Decode, {dec[0]['n_tokens']} tokens a run (greedy); roofline = read bandwidth / bytes a "
                   "token:")
        out.append("")
        rows = []
        for r in dec:
            lr = theirs.get((r["threads"], "decode", r["n_tokens"], r["context"]))
            rows.append([r["threads"], r["context"], r["path"], *vcell(r), f"**{r['tok_s']:.1f}**",
                         f"{r['bytes_per_token'] / 1e6:.0f}", f"{r['roofline_tok_s']:.1f}",
                         _pct(r["roofline_fraction"]),
                         _pct(r["attention_share"]) if r.get("attention_share") is not None else "-",
                         f"{lr['tok_s']:.1f}" if lr else "-",
                         f"**{r['tok_s'] / lr['tok_s']:.2f}x**" if lr else "-"])
        out += _table(["threads", "context", "path", *vcol_all, "tok/s", "MB a token", "roofline tok/s", "of roofline",
                       "attention share", "llama.cpp tok/s", "ryzjupyter / llama.cpp"], rows)
        out.append("")
        by = {(r["threads"], r["context"], r["path"]): r for r in dec
              if r.get("attention", "tiled") == variants[0] and kv_of(r) == kvs[0]}
        pairs = [(th, ctx) for (th, ctx, p) in by if p == "fused" and (th, ctx, "python") in by]
        if pairs:
            out.append("The fused decode (one C call a token) against the op-by-op Python path, same run:")
            out.append("")
            out += _table(["threads", "context", "fused / python tok/s"],
                          [[th, ctx, f"**{by[th, ctx, 'fused']['tok_s'] / by[th, ctx, 'python']['tok_s']:.2f}x**"]
                           for th, ctx in pairs])
            out.append("")
    pre = [r for r in ours if r["phase"] == "prefill"]
    if pre:
        out.append("Prefill into an empty cache; time to first token = the pass + the greedy pick; the "
                   "roofline is the int8 peak:")
        out.append("")
        rows = []
        for r in pre:
            lr = theirs.get((r["threads"], "prefill", r["n_tokens"], 0))
            rows.append([r["threads"], r["n_tokens"], *vcell(r), f"**{r['tok_s']:.1f}**", f"{r['ttft_s'] * 1e3:.0f}",
                         f"{r['int8_gops']:.0f}", _pct(r["roofline_fraction"]),
                         _pct(r["attention_share"]) if r.get("attention_share") is not None else "-",
                         f"{lr['tok_s']:.1f}" if lr else "-",
                         f"**{r['tok_s'] / lr['tok_s']:.2f}x**" if lr else "-"])
        out += _table(["threads", "tokens", *vcol_all, "tok/s", "TTFT ms", "int8 GOPS", "of int8 peak", "attention share",
                       "llama.cpp tok/s", "ryzjupyter / llama.cpp"], rows)
        out.append("")
    if kcol:
        # the formats side by side: same run, timed alternately; the ratio to the first format
        out.append(f"KV cache formats side by side (timed alternately in this run; ratio to {kvs[0]}):")
        out.append("")
        rows = []
        keyed = {}
        for r in dec + pre:
            if r.get("attention", "tiled") != variants[0]:
                continue
            what = (f"decode at {r['context']}, {r['path']}" if r["phase"] == "decode" else f"prefill {r['n_tokens']}")
            keyed.setdefault((r["threads"], what), {})[kv_of(r)] = r
        for (th, what), by_kv in keyed.items():
            base = by_kv.get(kvs[0])
            cells = []
            for k in kvs:
                r = by_kv.get(k)
                cells.append("-" if r is None else f"{r['tok_s']:.1f}" + (
                    f" (**{r['tok_s'] / base['tok_s']:.2f}x**)" if base is not None and k != kvs[0] else ""))
            att = [by_kv[k].get("attention_share") for k in kvs if k in by_kv]
            rows.append([th, what, *cells, " / ".join(_pct(a) if a is not None else "-" for a in att)])
        out += _table(["threads", "what", *[f"{k} tok/s" for k in kvs], "attention share (" + " / ".join(kvs) + ")"],
                      rows)
        out.append("")
    att = {(r["threads"], r["context"], kv_of(r)): r for r in ours
           if r["phase"] == "attention" and r.get("attention", "tiled") == variants[0]}
    ovh = {(r["threads"], r["path"]): r for r in ours if r["phase"] == "python_overhead"}
    if att or ovh:
        out.append("Where a decode step goes (fused path): attention alone over the cache, all layers, and "
                   "the Python around the C call:")
        out.append("")
        rows = []
        for r in dec:
            if r["path"] != "fused" or r.get("attention", "tiled") != variants[0]:
                continue
            a = att.get((r["threads"], r["context"], kv_of(r)))
            o = ovh.get((r["threads"], "fused")) if r["context"] == 0 and kv_of(r) == kvs[0] else None
            rows.append([r["threads"], r["context"], *([kv_of(r)] if kcol else []), f"{1e3 / r['tok_s']:.1f}",
                         f"{a['seconds_per_token'] * 1e3:.1f} ({_pct(a['seconds_per_token'] * r['tok_s'])})" if a
                         else "-",
                         f"{o['seconds_per_token'] * 1e3:.2f} ({o['fraction_of_step']:.1%})".replace("%", " %")
                         if o else "-"])
        out += _table(["threads", "context", *kcol, "ms a token", "attention ms (share)", "Python ms (share)"], rows)
        out.append("")
    mem = {r["what"]: r for r in ours if r["phase"] == "memory"}
    if "after_load" in mem:
        out.append(f"Memory: RSS {mem['after_load']['rss_bytes'] / 2**20:.0f} MiB after loading (peak "
                   f"{mem['after_load']['peak_rss_bytes'] / 2**20:.0f} MiB while loading)"
                   + (f", peak {mem['measurements']['peak_rss_bytes'] / 2**20:.0f} MiB while measuring"
                      if "measurements" in mem else "") + ".")
        out.append("")
    return "\n".join(out)


# ---- bench kernels -------------------------------------------------------------------------------

def kernels_tables(d: dict) -> str:
    R = d["records"]
    level = d["native"]["isa"]
    bw = {r["threads"]: r["gbps"] for r in R if r["kind"] == "read_bandwidth"}
    peak = {r["threads"]: r["gops"] for r in R if r["kind"] == "int8_peak"}
    out = _machine_lines(d) + ["", *_limits(bw, peak, level), ""]
    gemv = [r for r in R if r["kind"] in ("gemv", "gemv_model_pass")]
    if gemv:
        out += ["Decode: ternary GEMV (`ternary_linear_i2`, M = 1), weights streamed from DRAM:", ""]
        rows = [[r.get("shape") if r["kind"] == "gemv" else f"model pass ({r['bytes'] / 2**20:.0f} MiB)",
                 r["threads"], f"{r['gbps']:.1f}", _pct(r["frac_bw"]),
                 f"{r['seconds'] / r.get('copies', 1) * 1e6:.0f}" if r["kind"] == "gemv"
                 else f"{r['seconds'] * 1e3:.1f} ms"] for r in gemv]
        out += _table(["shape (N x K)", "threads", "GB/s", "of read bandwidth", "µs a matrix"], rows) + [""]
    head = [r for r in R if r["kind"] == "lm_head_gemv"]
    if head:
        out += [f"Decode lm_head GEMV ({head[0]['V']} x {head[0]['D']}), int8 and int4 alternating, each "
                "against a read probe in the same round:", ""]
        rows = [[r["format"], r["threads"], f"{r['bytes'] / 1e6:.0f}", f"{r['gbps']:.1f}",
                 f"{r['seconds'] * 1e3:.1f}", _pct(r["frac_bw"])] for r in head]
        out += _table(["lm_head", "threads", "MB", "GB/s", "ms", "of the probe"], rows) + [""]
    gemm = [r for r in R if r["kind"] == "gemm"]
    if gemm:
        out += ["Prefill: ternary GEMM (`ternary_linear_i2`), GOPS = 2 M N K / time:", ""]
        rows = [[r["shape"], r["M"], r["threads"], f"{r['gops']:.0f}", _pct(r.get("frac_peak")),
                 f"{r['seconds'] * 1e3:.2f}"] for r in gemm]
        out += _table(["shape (N x K)", "M", "threads", "GOPS", "of int8 peak", "ms"], rows) + [""]
    lay = [r for r in R if r["kind"] in ("layout_model_pass", "layout_gemm")]
    if lay:
        out += ["Layouts I2 (2 bits a weight) and T5 (1.6 bits), run alternately; T5 / I2 is the median of "
                "the per-round time ratios:", ""]
        rows = []
        for r in lay:
            if r["layout"] != "i2":
                continue
            t5 = next(x for x in lay if x["layout"] == "t5" and x["kind"] == r["kind"]
                      and x["threads"] == r["threads"] and x.get("shape") == r.get("shape")
                      and x.get("M") == r.get("M"))
            what = ("model pass (decode)" if r["kind"] == "layout_model_pass"
                    else f"GEMM {r['shape']}, M = {r['M']}")
            rows.append([what, r["threads"], f"{r['seconds'] * 1e3:.2f}", f"{t5['seconds'] * 1e3:.2f}",
                         f"**{r['t5_over_i2']:.3f}**"])
        out += _table(["what", "threads", "I2 ms", "T5 ms", "T5 / I2"], rows) + [""]
    return "\n".join(out)


# ---- bench ppl -----------------------------------------------------------------------------------

def ppl_table(docs: list[dict]) -> str:
    base = docs[0]["ppl"]
    out = _machine_lines(docs[0])
    for d in docs[1:]:
        if d.get("machine", {}).get("command"):
            out.append(f"- Command: `{d['machine']['command']}`")
    # the option the records differ in: the KV cache format (bench ppl --kv-cache), else the head
    key = "kv_cache" if len({d.get("kv_cache", "f32") for d in docs}) > 1 else "lm_head"
    name = {"kv_cache": "KV cache", "lm_head": "lm_head"}[key]
    errs = key == "kv_cache" and any("logit_error_vs_f32_kv" in d for d in docs)

    def err(d):
        e = d.get("logit_error_vs_f32_kv")
        if not e:
            return ["-", "-"]
        return [f"{e['max_abs']:.3g} ({e['max_rel']:.2e} rel.)", f"{e['argmax_agreement']:.2%}".replace("%", " %")]
    nwin = max((d["logit_error_vs_f32_kv"]["windows"] for d in docs if "logit_error_vs_f32_kv" in d), default=0)
    head = [f"max \\|logit diff\\| vs the f32 cache (first {nwin} windows)", "same next token"] if errs else []
    out += ["", *_table([name, "perplexity", "vs " + docs[0].get(key, "f32"), *head, "the trainer's perplexity",
                         "predicted tokens", "windows"],
                        [[d.get(key, "f32"), f"{d['ppl']:.4f}", f"{(d['ppl'] / base - 1):+.3%}".replace("%", " %"),
                          *(err(d) if errs else []), f"{d['trainer_ppl']:.4f}" if "trainer_ppl" in d else "-",
                          f"{d['predicted_tokens']:,}", d["windows"]] for d in docs]), ""]
    return "\n".join(out)


# ---- dispatch ------------------------------------------------------------------------------------

# ---- bench serve ---------------------------------------------------------------------------------

def serve_tables(d: dict) -> str:
    R = d["records"]
    out = _machine_lines(d)
    if "load_before" in d and not any(l.startswith("- Run:") and "load average" in l for l in out):
        out.insert(1, f"- Load average {d['load_before'][0]:.2f} before / {d['load_after'][0]:.2f} after.")
    batch = [r for r in R if r["kind"] == "serve_batch"]
    if batch:
        out += ["", f"Aggregate decode, BitNet-2B-4T shapes, {batch[0]['threads']} threads, "
                f"{batch[0]['decode_tokens']} decode steps a run:", ""]
        out += _table(["streams", f"tok/s (median of {len(batch[0]['runs'])})", "runs", "vs one stream (of medians)",
                       "per run"],
                      [[r["streams"], f"{r['tok_s']:.2f}", ", ".join(f"{x:.2f}" for x in r["runs"]),
                        f"**{r['ratio_vs_1']:.2f}x**", ", ".join(f"{x:.2f}" for x in r["ratio_runs"])
                        if r["streams"] != 1 else ""] for r in batch])
    step = [r for r in R if r["kind"] == "serve_step"]
    if step:
        out += ["", "One batched step timed in C (layers / int8 head, ms, each call):", ""]
        out += _table(["streams", "layers ms", "head ms"],
                      [[r["streams"], ", ".join(f"{x * 1e3:.0f}" for x in r["layers_runs"]),
                        ", ".join(f"{x * 1e3:.0f}" for x in r["head_runs"])] for r in step])
        if all("ceiling_vs_1" in r for r in step):
            s0 = step[0]
            out += ["", f"The ceiling: the int8 peak probed right after the steps, {s0['int8_peak_gops']:.0f} GOPS; a "
                    f"token's multiply-adds {s0['layer_macs'] / 1e9:.2f} G in the layers, {s0['head_macs'] / 1e9:.2f} G "
                    "in the head. Each phase of B streams' step takes at least that phase of one stream's step (the "
                    "weights read once) and at least its multiply-adds at that peak:", ""]
            out += _table(["streams", "step ms (median)", "multiply-adds at the peak, ms", "step at least, ms",
                           "measured vs one stream", "ceiling vs one stream"],
                          [[r["streams"], f"{(r['layers_s'] + r['head_s']) * 1e3:.1f}",
                            f"{r['compute_floor_s'] * 1e3:.1f}", f"{r['step_floor_s'] * 1e3:.1f}",
                            f"{r['streams'] * (s0['layers_s'] + s0['head_s']) / (r['layers_s'] + r['head_s']):.2f}x",
                            f"**{r['ceiling_vs_1']:.2f}x**"] for r in step])
    for r in R:
        if r["kind"] == "serve_load":
            out += ["", f"Load test ({r['model']} model): {r['requests']} streaming requests from {r['clients']} "
                    f"clients, {r['lost']} lost, {r['mixed']} mixed up, {r['req_s']:.1f} requests/s "
                    f"({r['wall_s']:.1f} s); time to first token p50 {r['ttft_p50_s'] * 1e3:.0f} ms, p99 "
                    f"{r['ttft_p99_s'] * 1e3:.0f} ms; latency p50 {r['latency_p50_s'] * 1e3:.0f} ms, p99 "
                    f"{r['latency_p99_s'] * 1e3:.0f} ms; server RSS {r['rss_before'] / 2**20:.1f} MiB after the "
                    f"warm-up, {r['rss_after'] / 2**20:.1f} MiB after the requests; still serving: "
                    f"{'yes' if r['serving_after'] else 'no'}."]
    out.append("")
    return "\n".join(out)


# ---- bench dask ----------------------------------------------------------------------------------

def dask_tables(d: dict) -> str:
    R = d["records"]
    out = _machine_lines(d)
    r0 = R[0]
    out += ["", f"generate_many on Dask LocalClusters, model {d['model']}: {r0['prompts']} prompts x "
            f"{r0['max_new_tokens']} tokens (greedy, ignore_eos), tasks of {r0['batch_size']} prompts, every "
            f"worker 1 Dask thread and 1 kernel thread; outputs identical on every cluster: "
            f"{'yes' if d['outputs_identical'] else 'NO'}:", ""]
    out += _table(["workers x threads", f"seconds (median of {len(r0['runs'])})", "runs", "tok/s",
                   "vs one worker (of medians)", "per run", "cores the workers had, per run",
                   "tokens per worker CPU second (median)", "model loads per worker"],
                  [[f"{r['workers']} x 1", f"{r['seconds']:.2f}", ", ".join(f"{x:.2f}" for x in r["runs"]),
                    f"{r['tok_s']:.1f}", f"**{r['ratio_vs_1']:.2f}x**",
                    ", ".join(f"{x:.2f}" for x in r["ratio_runs"]) if r["workers"] != 1 else "",
                    ", ".join(f"{x:.2f}" for x in r.get("cores_runs", [])) or "-",
                    f"{r['tokens'] / statistics.median(r['cpu_s_runs']):.0f}" if r.get("cpu_s_runs") else "-",
                    ", ".join(str(x) for x in r["model_loads"])] for r in R])
    out.append("")
    return "\n".join(out)


# ---- bench speculative ---------------------------------------------------------------------------

def speculative_tables(d: dict) -> str:
    R = d["records"]
    out = _machine_lines(d)
    if "load_before" in d and not any(l.startswith("- Run:") and "load average" in l for l in out):
        out.insert(1, f"- Load average {d['load_before'][0]:.2f} before / {d['load_after'][0]:.2f} after.")
    ver = [r for r in R if r["kind"] == "spec_verify"]
    if ver:
        v0 = ver[0]
        out += ["", f"Verify cost, {v0['shape']} shape (random weights, int8 head), {v0['threads']} threads; one "
                f"decode step {v0['step_s'] * 1e3:.1f} ms (median); r = verify time / step time:", ""]
        out += _table(["positions (draft tokens + 1)", "verify ms (median)", "r", "r in CPU time",
                       "layers / a step's (C)", "head / a step's (C)"],
                      [[r["positions"], f"{r['verify_s'] * 1e3:.1f}", f"{r['ratio']:.2f}",
                        f"{r['ratio_cpu']:.2f}",
                        f"{r['verify_layers_s'] / r['step_layers_s']:.2f}" if r.get("step_layers_s") else "-",
                        f"{r['verify_head_s'] / r['step_head_s']:.2f}" if r.get("step_head_s") else "-"] for r in ver])
        if all("ratio_floor" in r for r in ver):
            out += ["", f"The floor of r on this machine: each phase of a verify pass (layers, then head) takes at "
                    f"least that phase of a step (the weights read once) and at least its n tokens' multiply-adds "
                    f"({v0['layer_macs'] / 1e9:.2f} G / {v0['head_macs'] / 1e9:.2f} G a token) at the int8 peak "
                    f"probed right after ({v0['int8_peak_gops']:.0f} GOPS): r(n) >= "
                    + ", ".join(f"{r['ratio_floor']:.2f} (n = {r['positions']})" for r in ver) + "."]
    for r in R:
        if r["kind"] == "spec_draft_cost":
            ds = r["draft_shape"]
            out += ["", f"Draft shape (hidden {ds['hidden_size']}, {ds['num_hidden_layers']} layers, vocabulary "
                    f"{ds['vocab_size']}): one step {r['draft_step_s'] * 1e3:.1f} ms, c = {r['c']:.3f} of a "
                    f"target step ({r['price']} time)."]
    txt = [r for r in R if r["kind"] == "spec_text"]
    price = next((r.get("price", "wall") for r in R if r["kind"] == "spec_draft_cost"), "wall")
    if txt:
        pred = any("predicted_2b4t" in r for r in txt)
        out += ["", f"Real text on `{txt[0]['model']}`, greedy, {txt[0]['n_generated']} new tokens; tokens/s are "
                "medians, speedups against plain decoding in the same runs"
                + (f"; the last column prices each configuration's passes with the r ({price} time) and c above"
                   if pred else "")
                + ":", ""]
        head = ["text", "drafter", "k", "tok/s", "speedup", "per run", "CPU time speedup", "accepted / drafted",
                "tokens / pass"]
        if pred:
            head.append("2B-4T predicted")
        rows = []
        for r in txt:
            row = [r["text"], r["drafter"], r["k"], f"{r['tok_s']:.1f}", f"**{r['speedup']:.2f}x**",
                   f"{min(r['speedup_runs']):.2f}-{max(r['speedup_runs']):.2f}", f"{r['cpu_speedup']:.2f}x",
                   f"{r['accepted']} / {r['drafted']} ({_pct(r['acceptance'])})" if r["drafter"] != "plain" else "",
                   f"{r['tokens_per_pass']:.2f}"]
            if pred:
                row.append(f"{r['predicted_2b4t']:.2f}x" if "predicted_2b4t" in r else "")
            rows.append(row)
        out += _table(head, rows)
    out.append("")
    return "\n".join(out)


def embed_tables(d: dict) -> str:
    from ryzjupyter.bench.embed import embed_tables as lines
    return "\n".join(_machine_lines(d) + [""] + lines(d) + [""])


def memory_tables(d: dict) -> str:
    from ryzjupyter.bench.memory import memory_tables as lines
    return "\n".join(_machine_lines(d) + [""] + lines(d) + [""])


def soak_tables(d: dict) -> str:
    """`bench soak`: the replies of every cell and the kernel's memory."""
    out = _machine_lines(d)
    out += ["", f"{d['cells']} `%%ryz` cells ({d['tokens']} tokens each, chat turns 30) in one kernel in "
            f"{d['seconds']:.0f} s: {d['swaps']} hot-swaps between the two models, {d['chat_turns']} chat turns "
            f"({d['kv_reuse_checked']} checked for KV reuse), {d['interrupts_sent']} interrupts sent.", ""]
    out += _table(["replies complete", "marked interrupted", "interrupted before the reply began",
                   "lost, mixed or incomplete"],
                  [[d["complete"], d["interrupted"], d["interrupted_before_reply"], f"**{len(d['failures'])}**"]])
    out += ["", f"Kernel RSS: {d['rss_warm_mib']:.1f} MiB after the warm-up (the first quarter of the cells), "
            f"{d['rss_final_mib']:.1f} MiB at the end: **{d['rss_growth_mib']:+.2f} MiB** (bound "
            f"{d['rss_bound_mib']:g} MiB), a trend of {d['rss_slope_kib_per_cell']:+.1f} KiB a cell."]
    t = d.get("memory_trace")
    if t:                                   # --trace-memory: where the growth went
        mib = 2**20
        m0, m1 = t["mallinfo_warm"], t["mallinfo_end"]
        gained = ", ".join(f"{k} +{v}" for k, v in list(t["objects_growth"].items())[:8])
        out += ["", f"Where it went (`--trace-memory`, from the warm-up to the end): live objects gained {gained}; "
                f"source files parsed for traceback display {t['traceback_sources_warm']} -> "
                f"{t['traceback_sources_end']}; IPython's output cache (`Out`) {t.get('out_warm', '?')} -> "
                f"{t.get('out_end', '?')} entries; glibc's heap {(m0['arena'] + m0['hblkhd']) / mib:.1f} -> "
                f"{(m1['arena'] + m1['hblkhd']) / mib:.1f} MiB from the system ({m0['uordblks'] / mib:.1f} -> "
                f"{m1['uordblks'] / mib:.1f} in use); RSS {t['rss_end_mib']:.1f} MiB at the end, "
                f"{t['rss_after_trim_mib']:.1f} after malloc_trim."]
    return "\n".join(out) + "\n"


# ---- bench recurrent -----------------------------------------------------------------------------

def recurrent_tables(d: dict) -> str:
    R = d["records"]
    out = _machine_lines(d)
    bw = {r["threads"]: r["gbps"] for r in R if r["phase"] == "read_bandwidth"}
    out += ["", *_table(["threads", "read bandwidth GB/s (median)"], [[t, f"{bw[t]:.1f}"] for t in sorted(bw)])]
    dec = [r for r in R if r["phase"] == "decode"]
    key = lambda r: (r["shape"], r["weights"], r["threads"], r.get("isa"))  # noqa: E731
    pre = {key(r): r for r in R if r["phase"] == "prefill"}
    by_isa = any("isa" in r for r in dec)            # --isa: the levels side by side, a column each row
    if dec:
        if by_isa:
            out += ["", f"ISA levels measured side by side, alternating within each run: "
                        f"{', '.join(d.get('isas') or sorted({r['isa'] for r in dec}))}."]
        out += ["", "Decode (the fused step, one C call a token) against the roofline (the bandwidth probed "
                "right after each run / the bytes a step reads), and prefill:", ""]
        out += _table(["shape", "weights", "threads"] + (["ISA"] if by_isa else []) +
                      ["decode tok/s", "MB a token", "GB/s (probe)", "roofline tok/s", "of roofline", "prefill tok/s",
                       "vs llama.cpp"],
                      [[r["shape"], r["weights"], r["threads"]] + ([r.get("isa", "-")] if by_isa else []) +
                       [f"{r['tok_s']:.2f}", f"{r['bytes_per_token'] / 1e6:.0f}",
                        f"{r['bandwidth_gbps']:.1f}", f"{r['roofline_tok_s']:.2f}", f"**{_pct(r['roofline_fraction'])}**",
                        f"{pre[key(r)]['tok_s']:.1f}" if key(r) in pre else "-",
                        "not measured here"] for r in dec])
    cost = [r for r in R if r["phase"] == "int8_cost"]
    if cost:
        out += ["", "What int8 weights cost (perplexity of a text the f32 model sampled, under each format):", ""]
        out += _table(["shape", "tokens", "perplexity f32", "perplexity int8", "change", "mean KL divergence f32 to int8, nats"],
                      [[r["shape"], r["n_tokens"], f"{r['ppl_f32']:.3f}", f"{r['ppl_int8']:.3f}",
                        f"{r['ppl_ratio'] - 1:+.2%}".replace("%", " %"), f"{r['kl_mean']:.4f}"] for r in cost])
    if d.get("vs_llamacpp"):
        out += ["", f"llama.cpp: {d['vs_llamacpp']}."]
    out.append("")
    return "\n".join(out)


# ---- bench copy ----------------------------------------------------------------------------------

def copy_tables(d: dict) -> str:
    """`bench copy`: greedy reproduction of a repeated passage, second/first perplexity."""
    out = _machine_lines(d)
    R = d["records"]
    out += ["", *_table(["model", "context", "passages x tokens", "next tokens reproduced (mean)", "median",
                         "perplexity: first", "second", "second / first"],
                        [[r["model"], r["context"], f"{r['passages']} x {r['passage_tokens']} ({r['file']})",
                          f"**{r['copied_mean']:.1%}**".replace("%", " %"), f"{r['copied_median']:.1%}".replace("%", " %"),
                          f"{r['ppl_first']:.2f}", f"{r['ppl_second']:.2f}", f"**{r['second_over_first']:.3f}**"]
                         for r in R])]
    return "\n".join(out) + "\n"


# bench name (the record's "bench") -> renderer of one record; a new benchmark adds its own here
RENDERERS = {"kernels": kernels_tables, "model": model_tables, "serve": serve_tables, "dask": dask_tables,
             "speculative": speculative_tables, "embed": embed_tables, "memory": memory_tables,
             "soak": soak_tables, "recurrent": recurrent_tables,
             "copy": copy_tables}


def _bench_of(d: dict):
    """The bench that wrote a record: its "bench" field, else told by its records' kinds."""
    if d.get("bench"):
        return d["bench"]
    kinds = {r.get("kind", "") for r in d.get("records", [])}
    return "serve" if kinds and all(k.startswith("serve_") for k in kinds) else None


def render(files: list[Path]) -> str:
    """The markdown of the records in ``files``, ending in a blank line (so the end marker that
    follows it in a page stands on its own): one record, or any number of ``bench ppl`` ones."""
    docs = [json.loads(Path(f).read_text()) for f in files]
    kinds = {_bench_of(d) for d in docs}
    if kinds == {"ppl"}:
        text = ppl_table(docs)
    elif len(docs) != 1:
        raise SystemExit("report: one record at a time (several only for bench ppl records)")
    elif _bench_of(docs[0]) not in RENDERERS:
        raise SystemExit(f"report: no renderer for bench {_bench_of(docs[0])!r} ({files[0]}); add one to "
                         "RENDERERS in ryzjupyter/bench/report.py")
    else:
        text = RENDERERS[_bench_of(docs[0])](docs[0])
    return text.rstrip("\n") + "\n\n"


def blocks(text: str):
    """(files, embedded text) of each report block in a page."""
    for m in BLOCK_START.finditer(text):
        end = text.find(BLOCK_END, m.end())
        if end < 0:
            raise ValueError(f"a bench report block for {m['files']} has no end marker")
        yield m["files"].split(), text[m.end():end]
