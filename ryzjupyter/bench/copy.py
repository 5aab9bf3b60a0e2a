"""`python -m ryzjupyter.bench copy`: does a model read its context? In-context copying, measured.

For passages of a text the model never saw in training (default: the model folder's
validation.txt, the held-out chapters), two figures per passage:

- copy: the prompt is the passage, then its first `--prefix` tokens again; greedy decoding
  (temperature 0, end-of-text ignored) writes `--next` tokens, and the figure is the fraction of
  them equal, position by position, to the passage's own continuation after those first tokens;
- second/first perplexity: one forward pass over the passage twice; the perplexity of the second
  occurrence's tokens 1..P-1 against the first occurrence's tokens 1..P-1 (the same tokens, the
  second time with the first in context). A model that copies drives it far below 1.

The passages are `--passages` slices of `--passage-tokens` tokens spread evenly over the text; the
passage length is capped so that both the copy prompt and the doubled passage fit the context.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from ryzjupyter.decoding.perplexity import text_ids


def add_parser(sub) -> None:
    p = sub.add_parser("copy", help="in-context copying: greedy reproduction of a repeated passage, and the "
                                    "perplexity of its second occurrence against its first")
    p.add_argument("--model", action="append", default=None,
                   help="model folder, bundled name or hub id; repeat for several (default: demo and demo-draft)")
    p.add_argument("--file", default=None, help="text the models never saw (default: each model's validation.txt)")
    p.add_argument("--passages", type=int, default=16, help="passages (default 16)")
    p.add_argument("--passage-tokens", type=int, default=192,
                   help="tokens a passage (default 192, capped so that twice the passage fits the context)")
    p.add_argument("--prefix", type=int, default=16, help="tokens of the passage repeated in the prompt (default 16)")
    p.add_argument("--next", type=int, default=64, help="tokens greedy decoding writes (default 64)")
    p.add_argument("--json", default=None, help="write the record as JSON to this file")
    p.set_defaults(run=run)


def _nll(logits: np.ndarray, targets) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return logz - x[np.arange(len(targets)), targets]


def passages(ids: list[int], n: int, length: int) -> list[list[int]]:
    """n slices of `length` tokens spread evenly over ids (fewer if the text is short)."""
    if len(ids) < length:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one passage of {length}")
    starts = sorted(set(np.linspace(0, len(ids) - length, n).astype(int).tolist()))
    return [ids[s:s + length] for s in starts]


def copy_passage(model, passage: list[int], prefix: int, n_next: int) -> dict:
    """The two figures for one passage (see the module's docstring)."""
    P = len(passage)
    out = model.generate(passage + passage[:prefix], n_next, temperature=0.0, ignore_eos=True)
    got = list(out.tokens)[:n_next]
    want = passage[prefix:prefix + n_next]
    same = sum(a == b for a, b in zip(got, want))
    doubled = passage + passage
    nll = _nll(model.logits(doubled[:-1]), doubled[1:])          # row j predicts token j + 1
    first, second = nll[:P - 1], nll[P:2 * P - 1]                 # tokens 1..P-1 of each occurrence
    return {"copied": same / len(want), "first_divergence": next((j for j, (a, b) in enumerate(zip(got, want))
                                                                 if a != b), len(want)),
            "nll_first": float(first.mean()), "nll_second": float(second.mean())}


def measure(model, text: str, n_passages=16, passage_tokens=192, prefix=16, n_next=64) -> dict:
    ctx = int(model.max_context)
    P = min(passage_tokens, ctx // 2, ctx - n_next)
    if P < prefix + 1:
        raise ValueError(f"the context ({ctx}) is too short for a passage, a {prefix}-token prefix and "
                         f"{n_next} new tokens")
    n_next = min(n_next, P - prefix)
    rows = [copy_passage(model, p, prefix, n_next) for p in passages(text_ids(model, text), n_passages, P)]
    ppl1 = math.exp(statistics.fmean(r["nll_first"] for r in rows))
    ppl2 = math.exp(statistics.fmean(r["nll_second"] for r in rows))
    return {"context": ctx, "passages": len(rows), "passage_tokens": P, "prefix": prefix, "next": n_next,
            "copied_mean": statistics.fmean(r["copied"] for r in rows),
            "copied_median": statistics.median(r["copied"] for r in rows),
            "first_divergence_median": statistics.median(r["first_divergence"] for r in rows),
            "ppl_first": ppl1, "ppl_second": ppl2, "second_over_first": ppl2 / ppl1, "per_passage": rows}


def run(args) -> int:
    import ryzjupyter

    records = []
    for name in args.model or ["demo", "demo-draft"]:
        model = ryzjupyter.load(name)
        path = Path(args.file) if args.file else Path(getattr(model, "path", "") or "") / "validation.txt"
        if not path.is_file():
            raise SystemExit(f"no text file: {path} (pass --file PATH: text the model never saw in training)")
        r = measure(model, path.read_text(encoding="utf-8"), args.passages, args.passage_tokens, args.prefix,
                    args.next)
        r.update(model=name, file=path.name)
        records.append(r)
        print(f"{name}: {r['passages']} passages of {r['passage_tokens']} tokens from {path.name} "
              f"(context {r['context']}): greedy reproduces {r['copied_mean']:.1%} of the next {r['next']} tokens "
              f"(median {r['copied_median']:.1%}, first miss at token {r['first_divergence_median']:g}); "
              f"perplexity of the second occurrence {r['ppl_second']:.2f} vs the first {r['ppl_first']:.2f} "
              f"(ratio {r['second_over_first']:.3f})", flush=True)
    if args.json:
        from ryzjupyter.bench.probes import machine
        record = {"bench": "copy", "machine": machine(getattr(args, "argv", None)), "records": records}
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0
