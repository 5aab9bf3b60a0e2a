#!/usr/bin/env python
"""Write the demo notebooks from the cell lists below and execute them, storing their outputs.

    PYTHONPATH=. python notebooks/build_notebooks.py            # all
    PYTHONPATH=. python notebooks/build_notebooks.py quickstart # one

CI runs the notebooks with nbval and compares every output with what is stored (numbers that
depend on the machine, such as tok/s and times, are sanitised by notebooks/nbval_sanitize.cfg):

    python -m pytest --nbval notebooks/      # notebooks/conftest.py: RYZ_STREAM=0, sanitiser, current env

Re-run this script whenever the model a notebook uses changes (e.g. when the bundled demo model
replaces the test fixture): the stored outputs are the model's greedy / seeded output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The model the notebooks run: the bundled demo model (a small BitNet b1.58 trained by the project on
# the King James Bible, ryzjupyter/models/demo/MODEL_CARD.md); greedy and seeded outputs are deterministic.
MODEL_CELL = '''# the model: a folder, a hub id, or "demo" for the bundled model (ryzjupyter/models/demo)
MODEL = "demo"   # the bundled BitNet b1.58 demo model (4.9 MB of packed ternary weights, KJV-trained)'''


def md(text, tags=()):
    return ("markdown", text.strip("\n"), tags)


def code(text, tags=()):
    return ("code", text.strip("\n"), tags)


IGNORE = ("nbval-ignore-output",)          # a progress bar or a timing: run it, don't compare it
RAISES = ("raises-exception",)

QUICKSTART = [
    md("""
# ryzjupyter quick start

`%%ryz` sends a cell to a language model that runs **on this machine's CPU**, inside the kernel, and
streams the answer into the cell. No GPU, no server, no API key.

This notebook runs offline on the bundled demo model, a small BitNet b1.58 the project trained on the
King James Bible (so it writes in that style). Every cell also works with a real checkpoint, e.g.
`MODEL = "microsoft/bitnet-b1.58-2B-4T"` (downloaded once into the Hugging Face cache).
"""),
    code("%load_ext ryzjupyter"),
    md("""
## Load a model

`%ryz load` takes a folder, a Hugging Face id, or nothing (the bundled demo model). A `%%ryz` cell
with no model loaded loads `RyzMagics.default_model` by itself. `{MODEL}` in a line magic is the
Python variable.
"""),
    code(MODEL_CELL),
    code("%ryz load {MODEL} --name demo", IGNORE),
    code("%ryz list"),
    md("""
## Ask

The cell body is the prompt; the options on the `%%ryz` line override the settings for this cell.
`-n` caps the new tokens, `-t 0` is greedy decoding (the same answer every time). While the model
writes, the text grows in place (a few updates per second); the grey line below the reply shows
tokens and speeds.
"""),
    code("""
%%ryz -n 24 -t 0
And it came to pass
"""),
    md("""
## The reply object

`_` holds the last reply (like any cell result) and `-o NAME` stores it in a variable too:
`.text`, `.tokens`, `.stats`, `.settings` (every sampling setting that was used).
"""),
    code("""
reply = _
print(repr(reply.text))
print(reply.tokens[:8], "...")
print("generated:", reply.stats.n_generated, "tokens; prompt:", reply.stats.n_prompt, "tokens")
print({k: reply.settings[k] for k in ("temperature", "top_k", "top_p", "min_p", "max_new_tokens")})
"""),
    md("""
`{name}` in the cell is replaced by a Python variable (`{{` and `}}` are literal braces):
"""),
    code("""
topic = "the KV cache"
"""),
    code("""
%%ryz -n 16 -t 0 -o answer
Explain {topic} in one sentence. Use {{braces}} literally.
"""),
    code("""
print(answer.prompt)
print(answer.stats.n_generated, "tokens")
"""),
    md("""
## Sampling

Temperature, top-k, top-p, min-p and the repetition penalty are options (see the *sampling
explained* notebook). With `--seed` a sampled answer is reproducible:
"""),
    code("""
%%ryz -n 16 -t 0.9 --top-k 40 --top-p 0.95 --seed 7
In the beginning
"""),
    md("""
## Settings for the whole kernel

`%config RyzMagics` lists the settings; `%config RyzMagics.NAME = value` changes one for every
following cell (or put `c.RyzMagics.NAME = value` in `ipython_config.py`).
"""),
    code("""
%config RyzMagics.max_new_tokens = 12
%config RyzMagics.temperature = 0
%config RyzMagics.seed = 0
"""),
    code("""
%%ryz
The LORD is my shepherd
"""),
    md("""
## Chat

`--chat` keeps the conversation across cells, system prompt included (the model's chat template
is applied and the KV cache is reused, so a follow-up runs only its new tokens). `%ryz reset`
forgets it.
"""),
    code("""
%%ryz --chat --system "Answer briefly."
Hello! Who are you?
"""),
    code("""
%%ryz --chat
And what can you do?
"""),
    code("print(_.stats.n_cached, 'prompt tokens came from the KV cache')"),
    code("%ryz reset"),
    md("""
## Statistics and a quick benchmark

`%ryz stats` details the last reply; `%ryz bench` measures prefill and decode speed of the current
model (numbers depend on the machine).
"""),
    code("%ryz stats", IGNORE),
    code("%ryz bench -p 32 -n 16"),
    md("""
## Mistakes get a one-line message

Unknown options and bad values fail the cell with a hint (and stop "Run All"), without a
traceback:
"""),
    code("""
%%ryz --temprature 0.5
Hello
""", RAISES),
    md("""
## Stopping

The kernel's stop button (■, or *Kernel → Interrupt*) ends generation within a fraction of a second,
during the prompt or the answer. The partial answer stays in the cell, in `_` and in the chat
history (marked interrupted), and the cell stops "Run All" like any interrupted cell.

`%ryz help` (or `%%ryz --help`, or `%ryz?`) lists everything.
"""),
]

SAMPLING = [
    md("""
# Sampling explained

At every step a language model gives a score (*logit*) to every token of its vocabulary. The
softmax turns the scores into probabilities, and **sampling** picks the next token from them.
This notebook shows what each sampling setting of `%%ryz` does to those probabilities, on one
prompt, then the text each setting produces.

The model is the bundled demo model, a small BitNet b1.58 trained on the King James Bible: the
arithmetic is exactly what happens with a big model.
"""),
    code("%load_ext ryzjupyter"),
    code(MODEL_CELL),
    code("%ryz load {MODEL} --name demo", IGNORE),
    code("""
import numpy as np
from ryzjupyter.jupyter.magics import REGISTRY
from ryzjupyter.engine.sampling import filter_logits

model = REGISTRY.get("demo")
tok = model.tokenizer
prompt = "And it came to pass"
ids = tok.encode(prompt)
logits = model.logits(ids)[-1].astype(np.float64)      # the scores for the next token
print(len(ids), "prompt tokens; vocabulary of", logits.size, "tokens")

def probs(z):
    z = z - z[np.isfinite(z)].max()
    p = np.exp(z)
    return p / p.sum()

def show(columns, k=8):
    \"\"\"Print the k most likely tokens (by the first column) with every column's probability.\"\"\"
    order = np.argsort(-columns[0][1], kind="stable")[:k]
    print(f"{'token':>12} " + " ".join(f"{name:>10}" for name, _ in columns))
    for i in order:
        print(f"{tok.decode([int(i)])!r:>12} " + " ".join(f"{p[i]:10.3f}" for _, p in columns))
"""),
    md("""
## Temperature

The logits are divided by the temperature *T* before the softmax. *T* < 1 sharpens the
distribution (the favourite gets more), *T* > 1 flattens it, and *T* = 0 means always taking the
most likely token (greedy decoding).
"""),
    code("""
show([(f"T={t}", probs(logits / t)) for t in (1.0, 0.5, 2.0)])
"""),
    md("""
## Top-k

Keep only the *k* most likely tokens, renormalise, and sample among them.
"""),
    code("""
show([("all", probs(logits.copy())), ("top_k=3", probs(filter_logits(logits.copy(), top_k=3)))])
"""),
    md("""
## Top-p (nucleus)

Keep the smallest set of most likely tokens whose probabilities add up to at least *p*. How many
tokens that is depends on how confident the model is at this step.
"""),
    code("""
for p in (0.5, 0.9):
    kept = np.isfinite(filter_logits(logits.copy(), top_p=p))
    print(f"top_p={p}: keeps {kept.sum()} tokens")
show([("all", probs(logits.copy())), ("top_p=0.5", probs(filter_logits(logits.copy(), top_p=0.5)))])
"""),
    md("""
## Min-p

Keep the tokens whose probability is at least *min_p* times the probability of the favourite.
It adapts like top-p: a confident model keeps few tokens, an unsure one keeps many.
"""),
    code("""
for m in (0.05, 0.5):
    kept = np.isfinite(filter_logits(logits.copy(), min_p=m))
    print(f"min_p={m}: keeps {kept.sum()} tokens")
show([("all", probs(logits.copy())), ("min_p=0.5", probs(filter_logits(logits.copy(), min_p=0.5)))])
"""),
    md("""
## Repetition penalty

Tokens already in the context have their logit divided by the penalty (multiplied, when
negative), so the model is less likely to repeat itself.
"""),
    code("""
from ryzjupyter.engine.sampling import apply_repetition_penalty
penalised = apply_repetition_penalty(logits.astype(np.float32).copy(), ids, 1.5).astype(np.float64)
show([("penalty=1", probs(logits.copy())), ("penalty=1.5", probs(penalised))])
print("tokens of the prompt:", sorted(set(ids))[:12], "...")
"""),
    md("""
## The same prompt, generated with each setting

The engine applies the steps in this order: repetition penalty, temperature, top-k, top-p, min-p,
then draws one token. Greedy decoding always gives the same text; a seed makes a sampled text
reproducible.
"""),
    code("%config RyzMagics.show_stats = False"),
    code("""
%%ryz -n 16 -t 0
And it came to pass
"""),
    code("""
%%ryz -n 16 -t 1.0 --top-k 0 --top-p 1 --min-p 0 --seed 3
And it came to pass
"""),
    code("""
%%ryz -n 16 -t 1.0 --top-k 3 --top-p 1 --min-p 0 --seed 3
And it came to pass
"""),
    code("""
%%ryz -n 16 -t 1.0 --top-k 0 --top-p 0.5 --min-p 0 --seed 3
And it came to pass
"""),
    code("""
%%ryz -n 16 -t 1.0 --top-k 0 --top-p 1 --min-p 0.5 --seed 3
And it came to pass
"""),
    code("""
%%ryz -n 16 -t 2.0 --top-k 0 --top-p 1 --min-p 0 --seed 3
And it came to pass
"""),
    code("""
%%ryz -n 16 -t 0.7 --repetition-penalty 1.5 --seed 3 -o r
And it came to pass
"""),
    code("""
print(r.settings)
"""),
]

ROOFLINE = [
    md("""
# Kernels and the roofline, on this CPU

ryzjupyter's C kernels are held to two limits of the machine they run on: how fast it can **stream
memory** (decode reads every weight once per token, so its speed is bandwidth / bytes a token)
and how fast it can **multiply int8** (prefill reuses each weight for many tokens, so it is bound by
compute). This notebook measures both on your CPU, times the ternary kernels against them at
small sizes, plots the roofline, and shows where a generation's time goes. It runs in a few
seconds; the numbers are your machine's (they change from run to run on a busy machine).

`python -m ryzjupyter.bench kernels` and `python -m ryzjupyter.bench model` do the same at
BitNet-2B-4T sizes; docs/performance.md has their results on the machines measured.
"""),
    code("""
import numpy as np
import matplotlib.pyplot as plt
import ryzjupyter
from ryzjupyter import _native
from ryzjupyter.bench import probes

info = ryzjupyter.native_info()
THREADS = info["threads"]
print("CPU:", probes.cpu_model())
print("kernel level:", info["isa"], "| this CPU can run:", ", ".join(info["supported_isas"]),
      "| threads:", THREADS)
print("read probe loads:", probes.read_loop(), "| int8 peak loop:", probes.int8_peak_loop())
""", IGNORE),
    md("""
## The machine's limits

**Read bandwidth**: a C loop streams a 256 MiB buffer (far larger than the caches) with the widest
loads the CPU has; GB/s = bytes / seconds, the median of a few passes. **int8 peak**: a loop of
int8 multiply-adds that never touches memory, in the instruction sequence the ternary kernels of
the selected level use (`vpdpbusd` with AVX-512 VNNI; `vpmaddubsw` + `vpmaddwd` with AVX2); GOPS
counts a multiply-add as 2 operations. The plain-C level has no SIMD peak to measure.
"""),
    code("""
limits = {}
for th in sorted({1, THREADS}):
    bw, _ = probes.measure_bandwidth(256, th, repeat=3)
    peak, _ = probes.measure_int8_peak(th, repeat=1)
    limits[th] = (bw, peak)
    print(f"{th} thread(s): read bandwidth {bw:6.1f} GB/s,  int8 peak "
          + (f"{peak:6.0f} GOPS" if peak else "- (scalar level)"))
BW, PEAK = limits[THREADS]
""", IGNORE),
    md("""
## A ternary matrix product, checked

A BitNet linear layer multiplies int8 activations by ternary weights (-1, 0, +1) packed 4 to a byte
(the I2 layout). `ternary_linear_i2` quantizes each row of `x` to int8 and sums exactly in integers;
the same product written in numpy gives the same floats:
"""),
    code("""
rng = np.random.default_rng(0)
N, K = 2560, 2560                                  # one attention projection of BitNet-2B-4T
trits = rng.integers(-1, 2, (N, K), dtype=np.int8)
packed = np.empty((N, _native.i2_row_bytes(K)), np.uint8)
_native.pack_i2(packed, trits)
x = rng.standard_normal((4, K)).astype(np.float32)
out = np.empty((4, N), np.float32)
_native.ternary_linear_i2(out, packed, x, 0.5)

scale = np.float32(127) / np.abs(x).max(axis=1)                  # per-row int8 quantization
q = np.clip(np.rint(x * scale[:, None]), -128, 127).astype(np.int64)
ref = (q @ trits.T.astype(np.int64)).astype(np.float32) / scale[:, None] * np.float32(0.5)
print("packed:", packed.nbytes // 1024, "KiB for", N * K, "weights (2 bits each)")
print("matches numpy exactly:", np.array_equal(out, ref))
"""),
    md("""
## Throughput against the roofline

A pass multiplies `M` tokens by a set of such matrices larger than the last-level cache, so the
weights come from memory once per pass. Each pass does `2 M N K` operations on `N K / 4` bytes of
weights: **8 M operations per byte**. The roofline says a pass can go no faster than
`min(peak, 8 M x bandwidth)`: memory-bound for small `M` (decode is `M = 1`), compute-bound once
`8 M` passes the ridge point `peak / bandwidth`.
"""),
    code("""
import time

import os
l3 = os.sysconf("SC_LEVEL3_CACHE_SIZE") if "SC_LEVEL3_CACHE_SIZE" in os.sysconf_names else 0
target = max(64 << 20, 2 * max(l3, 0))             # twice the last-level cache, at least 64 MiB
mats = [packed.copy() for _ in range(-(-target // packed.nbytes))]
print(f"weights per pass: {sum(m.nbytes for m in mats) / 2**20:.0f} MiB in {len(mats)} matrices")

def pass_time(M, repeat=3):
    xm = rng.standard_normal((M, K)).astype(np.float32)
    om = np.empty((M, N), np.float32)
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        for w in mats:
            _native.ternary_linear_i2(om, w, xm, 1.0)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))

rows = []
for M in (1, 2, 4, 8, 16, 32, 64):
    t = pass_time(M)
    gops = 2 * M * N * K * len(mats) / t / 1e9
    bound = min(PEAK or np.inf, 8 * M * BW)
    rows.append((M, 8 * M, gops, bound))
    print(f"M={M:3d}  {8 * M:4d} ops/byte  {gops:7.1f} GOPS  roofline {bound:7.1f}  ({gops / bound:4.0%})")
""", IGNORE),
    code("""
fig, ax = plt.subplots(figsize=(7, 4.2))
ai = np.logspace(0, np.log10(1024), 200)
ax.plot(ai, ai * BW, "--", color="tab:blue", label=f"memory: {BW:.0f} GB/s x ops/byte")
if PEAK:
    ax.axhline(PEAK, ls="--", color="tab:red", label=f"int8 peak ({info['isa']}): {PEAK:.0f} GOPS")
ax.plot([r[1] for r in rows], [r[2] for r in rows], "o-", color="black", label="ternary_linear_i2, M tokens")
for M, a, g, _ in rows:
    ax.annotate(f"M={M}", (a, g), textcoords="offset points", xytext=(4, -12), fontsize=8)
ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (int8 ops per byte of weights)",
       ylabel="GOPS", title=f"Roofline, {THREADS} thread(s)",
       ylim=(min(r[2] for r in rows) / 2, max([PEAK or 0] + [r[2] for r in rows]) * 2))
ax.legend(loc="lower right", fontsize=8)
plt.show()
""", IGNORE),
    md("""
## Where a generation's time goes

Every generation carries a profile: the wall time split into phases measured inside the engine
(`matmul`: the ternary linear layers; `layers`: whole decode layers when one C call runs each;
`attention`, `lm_head` the vocabulary projection, `sampling`, ...; `python` is the rest, the
interpreter between the calls). `%ryz stats` shows the same for the last `%%ryz` cell. The bundled
demo model is small enough to sit in the caches, so its decode is not bound by DRAM: for a real
checkpoint the linear layers' share grows with the bytes a token reads.
"""),
    code("""
model = ryzjupyter.load("demo")
result = model.generate("And God said", max_new_tokens=48, temperature=0)
print(result.text)
"""),
    code("""
prof = result.profile
print(prof.table())
""", IGNORE),
    code("""
names, secs, fracs = zip(*[(n, s, f) for n, s, f in prof.ordered() if s > 0])
fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1))
ax.barh(names[::-1], [1e3 * s for s in secs[::-1]], color="tab:green")
for i, (s, f) in enumerate(zip(secs[::-1], fracs[::-1])):
    ax.annotate(f"{f:.0%}", (1e3 * s, i), textcoords="offset points", xytext=(3, -3), fontsize=8)
ax.set(xlabel="milliseconds", title=f"{prof.n_generated} tokens: prefill {prof.prefill_tok_s:.0f} tok/s, "
       f"decode {prof.decode_tok_s:.0f} tok/s")
plt.show()
""", IGNORE),
    md("""
At BitNet-2B-4T size a decode step reads about 850 MB; `python -m ryzjupyter.bench model` measures
that against this machine's bandwidth (and llama.cpp on the same weights with `--vs llamacpp`).
"""),
]

SCALEOUT = [
    md("""
# Scale-out on Dask

`ryzjupyter.distributed` runs many prompts (or a perplexity sweep over many texts) on a
[Dask](https://distributed.dask.org) cluster: here a `LocalCluster` of two single-threaded worker
processes on this machine; on a real cluster only the client changes (docs/distributed.md). Each
worker loads the model once; each task's prompts are decoded together on its worker; results come
back in the prompts' order, with a progress bar in the cell.
"""),
    code("""
from ryzjupyter.distributed import generate_many, perplexity, local_client, model_loads

client = local_client(2)          # a LocalCluster: 2 worker processes x 1 thread (RYZ_NUM_THREADS=1)
print(len(client.scheduler_info()["workers"]), "workers")
"""),
    md("""
## Many prompts

`generate_many` returns one `GenerationResult` per prompt, each the one `model.generate` gives that
prompt alone (greedy here; sampled prompts take a seed each, `seed=[...]`). The bar counts the
prompts as their tasks finish, then the tokens and the rate.
"""),
    code("""
prompts = ["In the beginning", "And God said", "Blessed are the", "The LORD is my", "And Moses said unto",
           "Now the serpent was", "Honour thy father", "And it came to pass"]
results = generate_many(prompts, model="demo", client=client, max_new_tokens=16, temperature=0, batch_size=2)
"""),
    code("""
for p, r in zip(prompts, results):
    print(f"{p!r:22} -> {r.text!r}")
"""),
    md("""
The model was loaded once in each worker process (a worker plugin; a second call reuses it):
"""),
    code("""
print(sorted(count for counts in model_loads(client).values() for count in counts.values()))
"""),
    md("""
## Perplexity over many texts

Each text is cut into windows as `python -m ryzjupyter.bench ppl` cuts them; the windows of all the
texts are spread over the workers.
"""),
    code("""
texts = ["In the beginning God created the heaven and the earth.",
         "And the LORD spake unto Moses, saying, Speak unto the children of Israel."]
for r in perplexity(texts, model="demo", client=client, progress=False):
    print(f"{r['source']}: perplexity {r['ppl']:.2f} over {r['predicted_tokens']} predicted tokens")
"""),
    md("""
## `%ryz map`: a prompt template over a list

The cell is the template (`{item}` is the item); `-o` names the list the results land in, as they
arrive. It runs on the process's Dask client (the one made above) or a local cluster.
"""),
    code("""
%load_ext ryzjupyter
names = ["Moses", "Aaron", "David", "Pharaoh"]
"""),
    code("""
%%ryz map names -o replies -m demo -n 12 -t 0
And {item} went up to
"""),
    code("""
print([r.text for r in replies[:3]])
"""),
]

SPECULATIVE = [
    md("""
# Speculative decoding, lossless

A **drafter** guesses the next few tokens; the model checks all of them in **one** batched pass and
keeps those its own sampler agrees with. When the guesses are good, one pass emits several tokens.
Nothing about the output changes: greedy output is token for token the plain output, and sampled
output has exactly the model's distribution. This notebook shows the rule that guarantees it, on a
tiny vocabulary, then the speedups on the bundled demo model (`docs/speculative.md` has the details).
"""),
    code("""
import numpy as np
import matplotlib.pyplot as plt
import ryzjupyter
from ryzjupyter.decoding import speculative
"""),
    md("""
## The rule on a vocabulary of 8 tokens

The target samples from p, a cheap draft from q. A draft token x ~ q is accepted with probability
min(1, p(x)/q(x)); on rejection the token is drawn from norm(max(0, p - q)). The distribution of
the emitted token, computed exactly from the two functions the decoder uses:
"""),
    code("""
rng = np.random.default_rng(0)
p = rng.dirichlet(np.full(8, 0.6))          # the target's distribution
q = rng.dirichlet(np.full(8, 0.6))          # a draft that disagrees with it
print("TV(p, q)                      =", round(0.5 * np.abs(p - q).sum(), 3))
print("max |emitted - p| (exact)     =", np.abs(speculative.step_distribution(p, q) - p).max())
"""),
    md("""
The same by sampling: 20000 speculative steps with the real rule, and with a **wrong** rule that
redraws from p on rejection (a classic bug). The right rule's histogram sits on p; the wrong one's
is pulled towards q.
"""),
    code("""
def sample(rule_residual, n=20000, seed=1):
    r = np.random.default_rng(seed)
    counts = np.zeros(8)
    for _ in range(n):
        x = speculative.draw(q, r.random())                 # the draft's token
        if r.random() < speculative.acceptance_probability(p, q, x):
            counts[x] += 1
        else:
            counts[speculative.draw(rule_residual(p, q), r.random())] += 1
    return counts / n

right = sample(speculative.residual)
wrong = sample(lambda p, q: p)
print("TV(right rule, p) =", round(0.5 * np.abs(right - p).sum(), 3))
print("TV(wrong rule, p) =", round(0.5 * np.abs(wrong - p).sum(), 3))
"""),
    code("""
x = np.arange(8)
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.bar(x - 0.3, p, 0.2, label="target p")
ax.bar(x - 0.1, q, 0.2, label="draft q")
ax.bar(x + 0.1, right, 0.2, label="speculative (right rule)")
ax.bar(x + 0.3, wrong, 0.2, label="wrong rule")
ax.set_xlabel("token"); ax.set_ylabel("probability"); ax.legend(fontsize=7, ncol=2)
plt.show()
""", IGNORE),
    md("""
## On the demo model

`draft=` picks the drafter: `"lookup"` (prompt lookup: copy what followed the same words earlier),
`"adjacency"` (the Token Recycling table of each token's likely successors, verified as a small
tree), `"auto"` (whichever pays), or a smaller model with the same tokenizer (`"demo-draft"`).
Greedy output is the same with every drafter:
"""),
    code("""
m = ryzjupyter.load("demo")
text = open(ryzjupyter.models.MODELS_DIR / "demo" / "validation.txt").read().split("\\n")
passage = " ".join(l for l in text[40:60] if l.strip())[:500]
prompt = passage + "\\n\\n" + passage[:60]                 # a grounded rewrite: the reply can copy
plain = m.new_session().generate(prompt, 48, temperature=0, ignore_eos=True)
for draft in ["lookup", "adjacency", "auto", "demo-draft"]:
    r = m.new_session().generate(prompt, 48, temperature=0, ignore_eos=True, draft=draft, num_draft=4)
    s = r.stats
    print(f"{draft:>10}: same tokens as plain: {r.tokens == plain.tokens}, "
          f"{s.accepted}/{s.drafted} drafts accepted, {s.target_passes} passes for {s.n_generated} tokens")
"""),
    md("""
Live speedups on this machine (adaptive draft length; timings vary with the machine and its load,
the recorded figures are in `docs/performance.md`):
"""),
    code("""
import statistics
def rate(**kw):
    return statistics.median(m.new_session().generate(prompt, 64, temperature=0, ignore_eos=True, **kw)
                             .stats.decode_tok_s for _ in range(3))
base = rate()
print(f"plain: {base:.0f} tok/s")
for draft in ["lookup", "adjacency", "auto", "demo-draft"]:
    v = rate(draft=draft)
    print(f"{draft:>10}: {v:.0f} tok/s = {v / base:.2f} x plain")
""", IGNORE),
]


TOKEN_RECYCLING = [
    md("""
# Token recycling: a memory of recycled semantic units

What the model read and wrote can be kept as **recycled semantic units** (RSUs): short pieces of
text with their embeddings, in a Qdrant bank. A later prompt that needs them gets them back, put
before the prompt. This is a *lossy* memory (the prompt changes, so the answer does); it is not the
lossless "Token Recycling" drafter of speculative decoding, which never changes the output.

Everything here runs offline: the embedder is the real all-MiniLM-L6-v2 on ryzjupyter's own C
kernels, the bank an embedded Qdrant store in a temporary folder, the model the bundled demo model.
"""),
    code("""
%load_ext ryzjupyter
import tempfile
import ryzjupyter
from ryzjupyter.jupyter.magics import get_magics

folder = tempfile.mkdtemp()
%config RyzMagics.memory_path = folder
%config RyzMagics.temperature = 0
%config RyzMagics.show_stats = False
bank = get_magics().bank()          # the bank %ryz memory and %%ryz --recycle use
"""),
    md("""
## Embeddings on our kernels

`ryzjupyter.embed` gives one unit vector of 384 numbers per text; a dot product is the cosine
similarity. Related texts score high, unrelated ones near zero.
"""),
    code("""
v = ryzjupyter.embed(["Noah built an ark of gopher wood.",
                      "The ark was made of wood by Noah.",
                      "The csv module reads comma separated values."])
print(v.shape, v.dtype)
print("related:  ", round(float(v[0] @ v[1]), 2))
print("unrelated:", round(float(v[0] @ v[2]), 2))
"""),
    md("""
## Add a document

`bank.add` cuts a text into RSUs at sentence boundaries, keeping neighbouring sentences together
while they stay on one subject, embeds them and stores them (each with its source and meta).
"""),
    code("""
document = (
    "Noah was six hundred years old when the flood of waters was upon the earth. "
    "The ark rested in the seventh month upon the mountains of Ararat. "
    "And Noah builded an altar unto the LORD, and offered burnt offerings on the altar.\\n\\n"
    "The csv module implements classes to read and write tabular data in CSV format. "
    "A csv.reader object iterates over the lines of a file."
)
ids = bank.add(document, source="file", meta={"name": "notes"})
for unit in bank.list():
    print(f"{unit.source}: {unit.text}")
"""),
    md("""
## Ask about it later

`%ryz memory search` shows what the bank would bring back for a question, and how similar each unit
is (the ids differ from run to run).
"""),
    code("%ryz memory search where did the ark rest -k 2", tags=IGNORE),
    md("""
`%%ryz --recycle K` puts up to K of those units before the prompt (within `--recycle-budget`
tokens). The reply says which ones it used in `_.recycled`.
"""),
    code("%ryz load demo", tags=IGNORE),
    code("""
%%ryz --recycle 2 -n 24
And the ark rested upon the mountains of
"""),
    code("""
for r in _.recycled:
    print(f"{r.score:.2f}  {r.source}  {r.tokens} tokens  {r.text[:60]}")
"""),
    md("""
Why these: the bank ranked its units by cosine similarity to the prompt, dropped any already in
the prompt or less similar than 0.1, and kept the best ones that fit the token budget. The same
prompt without `--recycle` reads only itself:
"""),
    code("""
%%ryz -n 24
And the ark rested upon the mountains of
"""),
    md("""
`%config RyzMagics.recycle = True` adds every prompt and reply to the bank as it goes;
`%ryz memory stats | list | forget ID | clear` manage it.
"""),
    code("""
s = bank.stats()
print(s["rsus"], "units;", "sources:", s["sources"])
"""),
    code("""
bank.close()
"""),
]

NOTEBOOKS = {"quickstart": QUICKSTART, "sampling_explained": SAMPLING, "kernels_and_roofline": ROOFLINE,
             "scale_out_on_dask": SCALEOUT, "speculative_decoding": SPECULATIVE,
             "token_recycling": TOKEN_RECYCLING}


def build(name, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src, tags in cells:
        c = nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = list(tags)
        nb.cells.append(c)
    for i, c in enumerate(nb.cells):          # stable ids: re-running the script gives small diffs
        c["id"] = f"{name[:10]}-{i:02d}"
    os.environ["RYZ_STREAM"] = "0"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    for c in nb.cells:
        if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.outputs) \
                and "raises-exception" not in c.metadata.get("tags", []):
            raise SystemExit(f"{name}: cell failed:\n{c.source}\n{c.outputs}")
    nbformat.write(nb, HERE / f"{name}.ipynb")
    print("wrote", HERE / f"{name}.ipynb")


if __name__ == "__main__":
    for n in sys.argv[1:] or list(NOTEBOOKS):
        build(n, NOTEBOOKS[n])
