"""Write MODEL_CARD.md for the bundled models from the trainer's own records (validation_ppl.json of each folder and
sizing_runs.json), so that every number in the card comes from a run:

    python -m ryzjupyter.train.card --main ryzjupyter/models/demo --draft ryzjupyter/models/demo-draft
"""
from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

CORPUS = """The King James Version of the Bible (1611 translation, Authorized Version), as shipped by the Debian packages
`bible-kjv` + `bible-kjv-text` (version 4.38 used here). Licence: **public domain** (Debian's copyright file:
"The copyright for the King James Version text of the Bible is expired"; note that in the United Kingdom the KJV
text is under perpetual Crown letters patent, so this model is "public domain" in the sense of the Debian package
and the US). The `bible` program's own code (GPL-2+) is only used to print the text and is not shipped.

Rebuild the corpus (1189 chapters, 31102 verses; verse references removed, one verse per line, chapters separated
by an empty line):

    apt-get install bible-kjv           # pulls bible-kjv-text
    python -m ryzjupyter.train.corpus --out-dir /tmp/kjv
    #   /tmp/kjv/kjv-train.txt  1159 chapters, 4,029,235 bytes
    #   /tmp/kjv/kjv-valid.txt    30 chapters,   109,801 bytes (held out: chapter index i % 40 == 20, spread
    #                                            over the whole book; shipped here as validation.txt)
"""


NO_COPY_LIMITATION = """* They do not read their context: given a held-out passage and then its first 16 tokens again, greedy decoding
  reproduces 3.0 % (`demo`) and 5.6 % (`demo-draft`) of the next 64 tokens, and the passage's second occurrence is
  barely easier than its first (perplexity ratio 0.955 / 0.969); `python -m ryzjupyter.bench copy`, AMD EPYC Zen 4,
  2026-12-07 (docs/performance.md, "In-context copying").
"""


def mib(path):
    return os.path.getsize(path) / 2**20


def cmdline(r):
    a = r["args"]
    parts = ["python -m ryzjupyter.train.train", f"--corpus /tmp/kjv/kjv-train.txt", f"--valid /tmp/kjv/kjv-valid.txt"]
    if a.get("tokenizer"):
        parts.append("--tokenizer /tmp/kjv/tokenizer.json")
    parts.append(f"--out {a['out']}")
    if a.get("ctx", 256) != 256:
        parts.append(f"--ctx {a['ctx']}")
    keys = ["hidden", "layers", "heads", "kv_heads", "batch", "lr"]
    keys += ["steps"] if a.get("steps") else ["cpu_minutes", "wall_minutes"]
    for k in keys + ["seed", "threads"]:
        if a.get(k) is not None:
            parts.append(f"--{k.replace('_', '-')} {a[k]}")
    if a.get("copy_frac"):
        parts.append(f"--copy-frac {a['copy_frac']}")
        parts.append("--copy-sources " + " ".join(s if s == "kjv" else "/tmp/kjv/" + os.path.basename(s)
                                                  for s in a["copy_sources"]))
        if a.get("copy_exclude"):
            parts.append("--copy-exclude " + " ".join("/tmp/kjv/" + os.path.basename(s) for s in a["copy_exclude"]))
    return " \\\n    ".join(parts)


def copy_sources_table():
    from .corpus import SOURCES
    rows = ["| source | Debian package | text | licence |", "|---|---|---|---|",
            "| `kjv` | `bible-kjv` + `bible-kjv-text` | the training chapters above (never the held-out ones) | public "
            "domain (see above) |"]
    for name, s in SOURCES.items():
        rows.append(f"| `{name}` | `{s['package']}` | {s['title']}, `{s['path']}` | {s['licence']} |")
    return "\n".join(rows)


def copy_mix_paragraph(r):
    cm = r.get("copy_mix")
    if not cm:
        return ""
    src = ", ".join(f"`{s['name']}` ({s['tokens']:,} tokens)" for s in cm["sources"])
    return (f"\n\nIn-context copy mix: {cm['frac']:.0%} of the rows ({cm['rows']:,} of {cm['rows_total']:,}) are copy "
            f"sequences (a passage of {cm['min_passage']}..{cm['max_passage']} tokens from one of {src}, chosen "
            f"uniformly, that recurs later in the row; rules in `ryzjupyter/train/copymix.py`); no copy row shares a "
            f"{cm['exclude_run_tokens']}-token run with {', '.join(cm['excluded'])}. Copy probe at the end: the "
            f"perplexity of a doubled validation passage's second occurrence over its first is "
            f"{r['copy_second_over_first']:.3f}.")


def wrapped(command: str) -> str:
    """One option (with its values) a line, continued with backslashes."""
    groups: list[list[str]] = []
    for w in command.split(" "):
        if not groups or w.startswith("--"):
            groups.append([])
        groups[-1].append(w)
    return " \\\n    ".join(" ".join(g) for g in groups)


def retrain_section():
    from . import retrain
    cmds = retrain.commands("/tmp/kjv", "/tmp/retrained")
    runs = {t["model"]: t for t in json.load(open(retrain.THROUGHPUT))} if os.path.isfile(retrain.THROUGHPUT) else {}
    lines = []
    for name in retrain.PLAN:
        n = retrain.steps(name)
        t = runs.get(name)
        if t:
            lines.append(f"| `{name}` | {n:,} × {t['batch']} × {t['ctx'] + 1} tokens | {t['cpu_s_per_step']:.2f} "
                         f"({t['steps']} steps, {t['tokens_per_cpu_s']:,.0f} tokens per CPU-second) | "
                         f"{n * t['cpu_s_per_step'] / 3600:.1f} h |")
        else:
            lines.append(f"| `{name}` | {n:,} steps | not measured | |")
    t0 = next(iter(runs.values()), None)
    where = (f"measured with `{t0['command']}` on {t0['cpu']}, 1 thread, {t0['date']}, load average "
             f"{t0['load_average_before_after'][0]:g} before / {t0['load_average_before_after'][1]:g} after (the "
             f"machine was shared; on a quiet machine a step takes less). The expected time counts the training "
             f"steps; the evaluation every 100 steps (12 windows and the copy probe) adds about 1-2 %, start-up "
             f"(tokenizing the sources) and the final evaluation a few minutes; with `--parallel` on two free cores "
             f"the wall time is about that of `demo`" if t0 else "not yet measured")
    body = "\n".join(wrapped(retrain.shell(c)) for c in cmds.values())
    return f"""
## Retraining: context 1024 and the in-context copy mix

One command (`ryzjupyter/train/retrain.py`) rebuilds the corpus with the copy sources, the tokenizer (the same
file: it is deterministic), trains `demo` and `demo-draft` at context 1024 with 30 % copy rows and writes this card
into the new folders; it never writes into `ryzjupyter/models/`:

    apt-get install bible-kjv python3.11-doc jargon-text dict-devil
    python -m ryzjupyter.train.retrain --work /tmp/kjv --out-dir /tmp/retrained --parallel

which runs, in order (`--dry-run` prints them):

```
{body}
```

Texts the copy mix draws passages from (each source is cut into paragraphs and documents of up to ~3000
characters; every 40th document is held out into `copy-valid.txt`, which the mix never draws from and which
`python -m ryzjupyter.bench copy --file /tmp/kjv/copy-valid.txt` measures copying on):

{copy_sources_table()}

Expected CPU time (fixed step counts, so the result does not depend on the machine's speed; one thread per model,
the two in parallel with `--parallel`):

| model | steps × rows × tokens | CPU seconds per step | expected CPU time |
|---|---|---|---|
{chr(10).join(lines)}

CPU seconds per step {where}. Validation perplexity at context 1024 is over 1024-token windows; the record's
`val_ppl_256` is the same text with 256-token windows, the figure to compare with the context-256 models above.
"""


def model_section(name, folder, r):
    c, p = r["config"], r["params"]
    st = os.path.join(folder, "model.safetensors")
    samples = "\n".join(
        f"* {s['kind']} `{s['prompt']}` →\n\n  ```\n  " + s["text"].replace("\n", "\n  ") + "\n  ```" for s in r["samples"])
    hist = "\n".join(f"| {h['step']} | {h['cpu_min']:.1f} | {h['val_ppl_partial']:.2f} |" for h in r["history"])
    return f"""## `{name}`

| | |
|---|---|
| architecture | BitNet b1.58 (transformers `BitNetForCausalLM`), hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads (head_dim {c['hidden_size'] // c['num_attention_heads']}), FFN {c['intermediate_size']} (relu2), RoPE θ {c['rope_theta']:g}, context {c['max_position_embeddings']} |
| vocabulary | {c['vocab_size']} (byte-level BPE, shared by both models) |
| parameters | {p['total']:,} total: {p['ternary']:,} ternary (BitLinear), {p['embedding']:,} embedding (tied float lm_head), {p['norms']:,} norm weights |
| file | `model.safetensors` {mib(st):.2f} MiB: U8 packed ternary + F32 `weight_scale`, BF16 embedding, F32 norms |
| training | {r['steps']} steps × {r['args']['batch']} sequences × {r['n_ctx']} tokens = {r['tokens_seen']:,} tokens (train stream {r['train_stream_tokens']:,} tokens, ≈ {r['tokens_seen'] / r['train_stream_tokens']:.1f} epochs); {r['train_cpu_minutes']:.1f} CPU-minutes on 1 thread ({r.get('train_wall_minutes', r['wall_minutes']):.1f} min wall on a shared 2-core Zen 4 machine) |
| **validation perplexity** | **{r['val_ppl']:.4f}** on `validation.txt` ({r['val_tokens']:,} tokens, {r['val_windows']} windows, {r['val_predicted_tokens']:,} predicted tokens) |
| transformers check | `BitNetForCausalLM.from_pretrained(folder, dtype=float32)` vs the trainer: max relative logit difference {r.get('transformers_max_rel_diff', float('nan')):.1e} |

Training command:

```
{cmdline(r)}
```

Validation perplexity during training (first 48 windows only):

| step | CPU min | ppl (48 windows) |
|---|---|---|
{hist}

Samples (trainer, temperature 0.8, top-k 40, seed 0; completions start with `<|begin_of_text|>`, chat prompts use the
chat template):

{samples}
"""


def sizing_table():
    rows = json.load(open(os.path.join(HERE, "sizing_runs.json")))
    out = ["| run | hidden | layers | heads/kv | params (ternary) | lr | steps in 4 CPU-min | val ppl |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "val_ppl" in r:
            out.append(f"| {r['run']} | {r['hidden']} | {r['layers']} | {r['heads']}/{r['kv_heads']} | "
                       f"{r['params']['total']:,} ({r['params']['ternary']:,}) | {r['lr']} | {r['steps']} | "
                       f"{r['val_ppl']:.1f} |")
        else:
            out.append(f"| {r['run']} | {r['hidden']} | {r['layers']} | {r['heads']}/{r['kv_heads']} | | {r['lr']} | "
                       f"– | {r['note']} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--main", default="ryzjupyter/models/demo")
    ap.add_argument("--draft", default="ryzjupyter/models/demo-draft")
    a = ap.parse_args(argv)
    rm = json.load(open(os.path.join(a.main, "validation_ppl.json")))
    rd = json.load(open(os.path.join(a.draft, "validation_ppl.json")))
    body = f"""# ryzjupyter demo models: `demo` (BitNet b1.58) and `demo-draft` (its speculative-decoding draft)

Two tiny BitNet b1.58 language models trained from scratch by this project (`ryzjupyter/train/`) so that `%%ryz`,
`ryzjupyter.load()` and every notebook work offline. They write English in the style of the King James Bible.
They are toys: they know the *style* of the text, not its content, and they do not follow instructions.

Both folders are in the `microsoft/bitnet-b1.58-2B-4T` packed layout (`config.json` with
`quantization_config {{quant_method: bitnet, linear_class: bitlinear, quantization_mode: offline}}`,
`model.safetensors`, `tokenizer.json`, `tokenizer_config.json` with a chat template, `generation_config.json`) and
load in transformers 5.23 as `BitNetForCausalLM` as well as in the ryzjupyter engine.

## Corpus

{CORPUS}
## Tokenizer

Byte-level BPE trained with `tokenizers` on `kjv-train.txt` (`python -m ryzjupyter.train.tok --corpus
/tmp/kjv/kjv-train.txt --vocab 4096 --out /tmp/kjv/tokenizer.json`; deterministic), vocabulary 4096, special tokens
`<|begin_of_text|>` = 0, `<|end_of_text|>` = 1, `<|eot_id|>` = 2; no post-processor (encoding adds no BOS). Chat
template = the BitNet-2B4T format: `<|begin_of_text|>System: …<|eot_id|>User: …<|eot_id|>Assistant: `; replies end
with `<|eot_id|>`; plain text ends with `<|end_of_text|>` (`generation_config.json` lists both as EOS).

## Training (quantization-aware, the engine's exact numerics)

`ryzjupyter/train/model.py` computes exactly what transformers' `BitNetForCausalLM` computes for this packed file:
every projection quantizes its input per token to int8 (`s = 127 / max|x|` clamped at 1e-5, round half to even,
clamp [-128, 127]) and its weight per tensor to ternary (`s_w = 1 / mean|W|`, `t = clamp(round(W·s_w), -1, 1)`),
output `(x_q · tᵀ) / (s_w · s_x)`; gradients pass straight through both roundings (STE). The exported
`weight_scale` is `s_w` (effective weight = ternary / weight_scale), the embedding is stored in BF16 and the trainer
rounds it to BF16 before the final evaluation, so the reported perplexity is that of the shipped file
(`python -m ryzjupyter.train.check <folder> --hf` recomputes it from the files alone and compares the logits with
transformers).

Data: each training chapter is a document `<|begin_of_text|>` + verses + `<|end_of_text|>`; in addition two chat
samples per chapter (user: one verse, sometimes with a prefix such as "Continue: " or a system prompt; assistant:
the next 1-4 verses, then `<|eot_id|>`), tokenized exactly as at inference (rendered prompt with the generation prompt,
then the answer). The documents are shuffled (seed 1234) and concatenated; each step draws {rm['args']['batch']} random windows of {rm['n_ctx'] + 1}
tokens.{copy_mix_paragraph(rm)} AdamW (β 0.9/0.95, weight decay 0.05 on the projection matrices), peak learning rate 3e-3, 3 % linear
warmup, cosine decay to 5 % driven by the fraction of the CPU-time budget used (capped by a wall-clock budget on the
busy machine), gradient clipping 1.0, float32, `torch.set_num_threads(1)`.

## Validation perplexity: exact rule (reproduce with `python -m ryzjupyter.bench ppl`)

{rm['windowing']}.

Concretely: `ids = Tokenizer.from_file("tokenizer.json").encode(open("validation.txt").read(),
add_special_tokens=False).ids` ({rm['val_tokens']:,} tokens), windows `ids[0:{rm['n_ctx']}], ids[{rm['n_ctx']}:{2 * rm['n_ctx']}], …`
({rm['val_windows']} windows, the last one has {rm['val_tokens'] - (rm['val_windows'] - 1) * rm['n_ctx']} tokens),
{rm['val_predicted_tokens']:,} predicted tokens in all. `validation_ppl.json` also lists the NLL of every window
(`val_window_nll`) and the SHA-256 of the text.

| model | validation ppl | predicted tokens |
|---|---|---|
| `demo` | {rm['val_ppl']:.4f} | {rm['val_predicted_tokens']:,} |
| `demo-draft` | {rd['val_ppl']:.4f} | {rd['val_predicted_tokens']:,} |

## Choosing the size: sizing runs compared

All with vocabulary 4096, context 256, batch 16, the same data and seed, 4 CPU-minutes each on 1 thread, validation
perplexity on the full `validation.txt` (same rule as above):

{sizing_table()}

At equal CPU time the 256×4 model was best; the wider 320×5 model learns more per step (ppl 205 vs 245 after 50
steps) but takes 1.5× longer per step, and the 6-layer model was worse per step and per second. With only ~10× the
sizing budget for the final run and a small corpus (≈1 M tokens of text), the 256×4 size was kept; lr 3e-3 beat
1.5e-3. These are short runs: a larger model trained for longer could do better.

{model_section("demo", a.main, rm)}
{model_section("demo-draft", a.draft, rd)}
## Checks (commands anyone can rerun)

* `python -m ryzjupyter.train.check ryzjupyter/models/demo --hf` (needs torch, transformers 5.23, accelerate):
  rebuilds the model from the packed files alone and recomputes the validation perplexity: identical to the
  trainer's number (relative difference 0); transformers `BitNetForCausalLM` in float32 with `attn_implementation=
  "eager"` gives bit-identical logits (max difference 0.0). With the default `sdpa` attention the logits differ by up
  to ~4e-3 relative: the sdpa kernel differs from eager in the last float bit, and an int8 activation rounding that
  sits on a .5 boundary then flips by one step. On the whole validation text this moves the perplexity of `demo` from
  52.01975 to 52.02123 (2.8e-5 relative), which is the size of disagreement to expect from any other correct engine.
* `pytest tests/train` (no torch needed for `test_bundled_models.py`): file layout, tokenizer and chat template, and
  an independent numpy implementation of the BitNet forward pass that reproduces the trainer's NLL of the first
  validation windows.

## Compute actually used

The machine (2 cores) was shared with other jobs during the final runs (load average 4-11), so the runs were capped
by wall-clock time (`--wall-minutes`) and got less CPU than their `--cpu-minutes` budget: `demo` trained for
{rm['train_cpu_minutes']:.1f} CPU-minutes (budget 38), `demo-draft` for {rd['train_cpu_minutes']:.1f} (budget 9). On an
idle machine the same commands without `--wall-minutes` take ≈ 38 and ≈ 9 minutes and should reach a lower
perplexity. Throughput on 1 Zen 4 thread: ≈ 2,450 training tokens per CPU-second for `demo`, ≈ 6,500 for
`demo-draft`.

## Limitations

* Tiny models trained for minutes: the text is KJV-flavoured but mostly incoherent beyond a sentence; facts, names
  and verse contents are not reliable; they do not answer questions, they continue in the style of the corpus.
* The corpus is a single 17th-century religious text: archaic English, its worldview and biases; nothing else{
  "" if not rm.get("copy_mix") else " but the passages of the copy mix (what the model learns from them is to copy)"}.
* Context {rm['n_ctx']} tokens; trained only from position 0 of random windows (no BOS at most window starts).
* The chat format is learned only superficially (user verse → assistant continues with following verses).
{"" if rm.get("copy_mix") else NO_COPY_LIMITATION}{retrain_section()}"""
    for folder, title in ((a.main, None), (a.draft, "demo-draft")):
        with open(os.path.join(folder, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
            f.write(body)
    print("wrote", os.path.join(a.main, "MODEL_CARD.md"), os.path.join(a.draft, "MODEL_CARD.md"))


if __name__ == "__main__":
    main()
