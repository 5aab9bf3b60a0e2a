"""`python -m ryzjupyter.bench ppl`: perplexity of a model over a text file, computed by the engine.

The windowing and the NLL of a window are ryzjupyter/decoding/perplexity.py's (the one the bundled
models' trainer documents, so the figure can be compared with the trainer's own validation
perplexity).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ryzjupyter.decoding.perplexity import summary, text_ids, window_nll, windows

__all__ = ["perplexity", "windows", "window_nll"]


def perplexity(model, text: str, n_ctx: int | None = None, max_windows: int | None = None) -> dict:
    n_ctx = int(n_ctx or model.max_context)
    ids = text_ids(model, text)
    wins = windows(ids, n_ctx)[:max_windows] if max_windows else windows(ids, n_ctx)
    if not wins:
        raise ValueError("the text is too short: it needs at least 2 tokens")
    t0 = time.perf_counter()
    nlls = [window_nll(model, w) for w in wins]
    dt = time.perf_counter() - t0
    res = summary(nlls, wins, len(ids), n_ctx)
    return {**res, "seconds": dt, "tok_s": res["predicted_tokens"] / dt}


def logit_error(model, exact, text: str, n_ctx: int | None = None, n_windows: int = 8) -> dict:
    """How far `model`'s logits (a lossy option, e.g. a rounded KV cache) are from `exact`'s (the same
    weights with the exact option) over the first n_windows windows of the text: max |diff|, that
    over max |exact logit| (relative), and how often the two pick the same next token."""
    import numpy as np
    n_ctx = int(n_ctx or model.max_context)
    wins = windows(text_ids(model, text), n_ctx)[:n_windows]
    worst = ref_max = 0.0
    agree = total = 0
    for w in wins:
        a, b = model.logits(w[:-1]).astype(np.float64), exact.logits(w[:-1]).astype(np.float64)
        worst, ref_max = max(worst, float(np.abs(a - b).max())), max(ref_max, float(np.abs(b).max()))
        agree += int((a.argmax(axis=1) == b.argmax(axis=1)).sum())
        total += a.shape[0]
    return {"windows": len(wins), "positions": total, "max_abs": worst, "max_rel": worst / ref_max,
            "argmax_agreement": agree / total}


def add_parser(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity of a model over a text file (engine forward)")
    p.add_argument("--model", default=None, help="model folder or hub id (default: the bundled model)")
    p.add_argument("--file", default=None,
                   help="text file (default: the model folder's validation.txt, if it has one)")
    p.add_argument("--ctx", type=int, default=None, help="window length (default: the model's context)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--lm-head", default="f32", choices=("f32", "int8", "int4"),
                   help="lm_head format (default f32, exact; int8 and int4 are lossy: this measures their cost)")
    p.add_argument("--kv-cache", default="f32", choices=("f32", "f16", "bf16", "int8"),
                   help="KV cache format (default f32, exact; f16, bf16 and int8 round the cached keys and values: "
                        "this measures their cost)")
    p.add_argument("--json", default=None, help="write the result as JSON to this file")
    p.set_defaults(run=run)


def run(args) -> int:
    import ryzjupyter

    model = ryzjupyter.load(args.model, lm_head=args.lm_head, kv_cache=args.kv_cache)
    folder = Path(getattr(model, "path", "") or "")
    path = Path(args.file) if args.file else folder / "validation.txt"
    if not path.is_file():
        raise SystemExit(f"no text file: {path} (pass --file PATH)")
    res = perplexity(model, path.read_text(encoding="utf-8"), args.ctx, args.max_windows)
    res["file"] = str(path)
    res["lm_head"] = args.lm_head
    res["kv_cache"] = args.kv_cache
    if args.kv_cache != "f32":        # the logits themselves against the exact cache's
        exact = ryzjupyter.load(args.model, lm_head=args.lm_head)
        res["logit_error_vs_f32_kv"] = e = logit_error(model, exact, path.read_text(encoding="utf-8"), args.ctx,
                                                       min(8, args.max_windows or 8))
        print(f"logits vs the f32 cache over {e['positions']} positions ({e['windows']} windows): max |diff| "
              f"{e['max_abs']:.3g}, relative {e['max_rel']:.3g}, same argmax {e['argmax_agreement']:.2%}")
    print(f"lm_head {args.lm_head}, KV cache {args.kv_cache}: perplexity {res['ppl']:.4f} over {res['predicted_tokens']:,} predicted tokens "
          f"({res['windows']} windows of <= {res['n_ctx']}) in {res['seconds']:.1f} s "
          f"({res['tok_s']:.0f} tok/s)")
    ref = folder / "validation_ppl.json"
    if args.file is None and ref.is_file() and not args.max_windows:
        trainer = json.loads(ref.read_text())["val_ppl"]
        res["trainer_ppl"] = trainer
        res["relative_difference"] = res["ppl"] / trainer - 1
        print(f"trainer's validation perplexity {trainer:.4f}: engine/trainer - 1 = "
              f"{res['relative_difference']:+.2e}")
    if args.json:
        from ryzjupyter.bench.probes import machine
        res = {"bench": "ppl", "machine": machine(getattr(args, "argv", None)), **res}
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0
