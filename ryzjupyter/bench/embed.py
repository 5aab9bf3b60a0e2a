"""`python -m ryzjupyter.bench embed`: ryzjupyter.embed beside sentence-transformers, same threads.

    python -m ryzjupyter.bench embed [--texts 256] [--threads 2] [--repeat 5] [--json FILE]

The texts are cut from the bundled demo model's validation text into pieces of 8 to 200 words
(the lengths cycle, so a batch holds short and long texts, some past the 256-token limit). Each
run embeds all of them with our kernels (all-MiniLM-L6-v2, families/bert.py) and with
sentence-transformers (torch, fp32, its default batch size 32), alternating, on the same thread
count (torch.set_num_threads and the native pool); the figure is texts/s, medians over the
runs, and the ratio of the medians with the ratio of each run beside it. The agreement (the
lowest cosine between the two embeddings of a text) is recorded too.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

LENGTHS = (8, 16, 32, 64, 128, 200)


def corpus(n: int) -> list[str]:
    """n texts of 8..200 words cut from the demo model's validation text (read in a loop)."""
    from ryzjupyter.models import MODELS_DIR

    words = (MODELS_DIR / "demo" / "validation.txt").read_text(encoding="utf-8").split()
    out, pos = [], 0
    for i in range(n):
        k = LENGTHS[i % len(LENGTHS)]
        if pos + k > len(words):
            pos = 0
        out.append(" ".join(words[pos:pos + k]))
        pos += k
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="ryzjupyter.embed vs sentence-transformers (texts/s, same threads)")
    p.add_argument("--texts", type=int, default=256, help="texts per run (default 256)")
    p.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    p.add_argument("--repeat", type=int, default=5, help="runs (default 5; medians)")
    p.add_argument("--no-reference", action="store_true", help="time ryzjupyter.embed only")
    p.add_argument("--json", metavar="FILE", help="write the record (and the machine) to FILE")
    p.set_defaults(run=run)


def run(args) -> int:
    from ryzjupyter import _native
    from ryzjupyter.bench import probes
    from ryzjupyter.memory.embedding import embed, get_encoder

    _native.set_num_threads(args.threads)
    where = probes.machine(getattr(args, "argv", None))
    load0 = os.getloadavg()
    texts = corpus(args.texts)
    enc = get_encoder()
    tokens = sum(len(t) for t in enc.tokenize(texts))
    print(f"machine: {where['cpu']}, isa {where['isa']}, {args.threads} threads, load {load0[0]:.2f}; "
          f"{len(texts)} texts, {tokens} tokens (after truncation)")
    st = None
    if not args.no_reference:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(args.threads)
        st = SentenceTransformer(str(enc.folder), device="cpu")
    ours_v = embed(texts)                                          # warm-up (and the agreement)
    cos_min = None
    if st is not None:
        ref = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        cos_min = float((ours_v * ref).sum(1).min())
    ours, theirs = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        embed(texts)
        ours.append(len(texts) / (time.perf_counter() - t0))
        if st is not None:
            t0 = time.perf_counter()
            st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
            theirs.append(len(texts) / (time.perf_counter() - t0))
        print(f"  run: ryzjupyter {ours[-1]:.1f} texts/s" + (f", sentence-transformers {theirs[-1]:.1f} texts/s, "
                                                           f"ratio {ours[-1] / theirs[-1]:.2f}x" if theirs else ""))
    rec = {"kind": "embed", "texts": len(texts), "tokens": tokens, "threads": args.threads,
           "ours_runs": ours, "ours_texts_s": statistics.median(ours), "model": enc.name}
    if theirs:
        rec.update(reference="sentence-transformers", reference_runs=theirs,
                   reference_texts_s=statistics.median(theirs),
                   ratio=statistics.median(ours) / statistics.median(theirs),
                   ratio_runs=[a / b for a, b in zip(ours, theirs)], cosine_min=cos_min)
        print(f"median: ryzjupyter {rec['ours_texts_s']:.1f} texts/s, sentence-transformers "
              f"{rec['reference_texts_s']:.1f} texts/s: {rec['ratio']:.2f}x; lowest cosine {cos_min:.7f}")
    load1 = os.getloadavg()
    if args.json:
        info = _native.info()
        meta = {"bench": "embed", "machine": where, "native": {k: info[k] for k in ("isa", "threads", "version")},
                "load_before": load0, "load_after": load1, "repeat": args.repeat}
        with open(args.json, "w") as f:
            json.dump({**meta, "records": [rec]}, f, indent=1)
        print(f"wrote the record to {args.json}")
    return 0


def embed_tables(d: dict) -> list[str]:
    """The report's lines for one `bench embed` record (bench/report.py)."""
    r = d["records"][0]
    lines = [f"{r['texts']} texts of 8-200 words ({r['tokens']} tokens), {r['model']}, {r['threads']} threads, "
             f"{len(r['ours_runs'])} runs:", ""]
    head = ["engine", "texts/s (median)", "runs"]
    rows = [["ryzjupyter.embed (our kernels)", f"{r['ours_texts_s']:.1f}", ", ".join(f"{x:.1f}" for x in r["ours_runs"])]]
    if "reference_runs" in r:
        rows.append(["sentence-transformers (torch fp32)", f"{r['reference_texts_s']:.1f}",
                     ", ".join(f"{x:.1f}" for x in r["reference_runs"])])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in rows]
    lines += out
    if "ratio" in r:
        lines += ["", f"Ratio of the medians **{r['ratio']:.2f}x** (per run: "
                  f"{', '.join(f'{x:.2f}' for x in r['ratio_runs'])}); lowest cosine between the two embeddings "
                  f"of a text {r['cosine_min']:.7f}."]
    return lines
