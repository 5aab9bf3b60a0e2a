"""`%ryz bench`: a quick prefill + decode measurement of a loaded model.

Runs in a fresh session (its own small KV cache), so the chat history and the model's default
session are untouched. Greedy, end-of-sequence ignored, so exactly `new_tokens` are decoded.
The numbers are the engine's own GenerationStats (time to first token, prefill and decode tok/s).
"""

from __future__ import annotations

SAMPLE_TEXT = ("The quick brown fox jumps over the lazy dog. A kernel runs code for a notebook, "
               "and a model turns tokens into more tokens. ")


def prompt_ids(model, n: int) -> list[int]:
    """n token ids of ordinary text (repeated as needed)."""
    tok = getattr(model, "tokenizer", None)
    base = tok.encode(SAMPLE_TEXT, add_special_tokens=False) if tok is not None else []
    if not base:
        base = list(range(min(model.vocab_size, 256)))
    ids = (base * (n // len(base) + 1))[:n]
    return ids


def quick_bench(model, n_prompt: int = 64, n_new: int = 32) -> dict:
    n_ctx = min(model.max_context, n_prompt + n_new + 1)
    n_prompt = min(n_prompt, n_ctx - n_new - 1) if n_ctx > n_new + 1 else max(1, n_ctx // 2)
    session = model.new_session(max_context=n_ctx)
    ts = session.stream(prompt_ids(model, n_prompt), max_new_tokens=min(n_new, n_ctx - n_prompt),
                        temperature=0.0, ignore_eos=True)
    try:
        for _ in ts:
            pass
    finally:
        if ts.result is None:
            ts.interrupt()
    s = ts.result.stats
    if ts.result.finish_reason == "interrupted":
        raise KeyboardInterrupt
    return {"n_prompt": s.n_prompt, "n_generated": s.n_generated, "ttft_s": s.ttft_s,
            "prefill_tok_s": s.prefill_tok_s, "decode_tok_s": s.decode_tok_s}
