"""Re-check a shipped model folder from its files alone (no trainer state):

    python -m ryzjupyter.train.check ryzjupyter/models/demo [--hf]

1. rebuilds the model from the packed safetensors (ternary weights and weight_scale used as stored),
2. recomputes the validation perplexity of ``validation.txt`` with the documented windowing and compares it with
   ``validation_ppl.json`` (written by the trainer),
3. with --hf: loads the folder with transformers' BitNetForCausalLM (float32, eager and sdpa attention) and
   reports the max relative logit difference on random token windows.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from tokenizers import Tokenizer

    from .model import load_packed
    from .train import evaluate, valid_windows

    m = load_packed(a.folder)
    ref = json.load(open(os.path.join(a.folder, "validation_ppl.json")))
    tok = Tokenizer.from_file(os.path.join(a.folder, "tokenizer.json"))
    text = open(os.path.join(a.folder, "validation.txt"), encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False).ids
    wins = valid_windows(ids, m.config.max_position_embeddings)
    nll, n = evaluate(m, wins)
    ppl = math.exp(nll / n)
    print(f"{a.folder}: ppl from packed files {ppl:.6f} (trainer wrote {ref['val_ppl']:.6f}; "
          f"rel diff {abs(ppl / ref['val_ppl'] - 1):.2e}); {n} predicted tokens in {len(wins)} windows")
    ok = abs(ppl / ref["val_ppl"] - 1) < 1e-4
    if a.hf:
        from transformers import AutoModelForCausalLM

        g = torch.Generator().manual_seed(0)
        x = torch.randint(3, m.config.vocab_size, (2, m.config.max_position_embeddings), generator=g)
        x2 = torch.tensor(wins[:2])
        for impl in ("eager", "sdpa"):
            hf = AutoModelForCausalLM.from_pretrained(a.folder, dtype=torch.float32, attn_implementation=impl).eval()
            for name, inp in (("random ids", x), ("validation windows", x2)):
                with torch.no_grad():
                    r = m(inp)
                    h = hf(input_ids=inp).logits
                rel = float((h - r).abs().max() / r.abs().max())
                print(f"transformers BitNetForCausalLM fp32 attn={impl} on {name}: max rel logit diff {rel:.3e}")
                ok = ok and (impl != "eager" or rel <= 1e-4)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
