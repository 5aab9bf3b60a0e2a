"""Perplexity from the engine's logits: the windows a text is cut into and each window's NLL.

The windowing is the one the bundled models' trainer documents (ryzjupyter/train/train.py), so a
figure can be compared with the trainer's own validation perplexity:

    ids = tokenizer.encode(text, add_special_tokens=False)        (no BOS, no EOS)
    windows ids[i*n : (i+1)*n] for i = 0, 1, ...  (n = the context, default the model's);
    the last window keeps the remainder and is dropped if it has fewer than 2 tokens;
    each window runs on its own from position 0 (one batched prefill, fresh cache);
    in a window of length L, tokens 1..L-1 are predicted from the tokens before them;
    ppl = exp(sum of -log p / number of predicted tokens)   (log-softmax in float64)

`python -m ryzjupyter.bench ppl` runs it over one file in this process;
`ryzjupyter.distributed.perplexity` runs the windows of many texts on a Dask cluster.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["windows", "window_nll", "text_ids", "summary"]


def text_ids(model, text: str) -> list[int]:
    """The text's token ids as perplexity counts them (no BOS, no EOS)."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer.json: perplexity over text needs one")
    return model.tokenizer.encode(text, add_special_tokens=False)


def windows(ids: list[int], n_ctx: int) -> list[list[int]]:
    """ids cut into windows of n_ctx tokens (the last keeps the remainder; one of < 2 tokens is dropped)."""
    if n_ctx < 2:
        raise ValueError(f"the window length must be at least 2 tokens, got {n_ctx}")
    wins = [ids[i:i + n_ctx] for i in range(0, len(ids), n_ctx)]
    return [w for w in wins if len(w) >= 2]


def window_nll(model, window: list[int]) -> float:
    """Sum of -log p(token j+1 | tokens 0..j) over one window, from the engine's logits."""
    logits = model.logits(window[:-1]).astype(np.float64)          # [L-1, vocab]
    m = logits.max(axis=1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
    target = logits[np.arange(len(window) - 1), window[1:]]
    return float(np.sum(logz - target))


def summary(nlls: list[float], wins: list[list[int]], n_tokens: int, n_ctx: int) -> dict:
    """The perplexity of a text from its windows' NLLs (math.fsum: the order they were summed in
    does not change the result)."""
    count = sum(len(w) - 1 for w in wins)
    total = math.fsum(nlls)
    return {"ppl": math.exp(total / count), "nll_sum": total, "predicted_tokens": count,
            "tokens": n_tokens, "windows": len(wins), "n_ctx": n_ctx}
