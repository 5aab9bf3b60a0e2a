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

NOTEBOOKS = {"quickstart": QUICKSTART, "sampling_explained": SAMPLING}


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
