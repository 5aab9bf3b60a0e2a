"""Recycled semantic units in the prompt: `model.generate(prompt, recycle=bank)`.

The bank is any object with ``search(query, k) -> hits`` whose hits have ``.id``, ``.text`` and
``.score`` (ryzjupyter.RecycleBank; this layer does not import it). For a text prompt:

1. retrieve: ``bank.search(prompt, k * 2)`` (twice what is wanted, for the next steps; a bank with
   ``count_uses`` counts a use only for the units step 4 keeps);
2. dedup: a hit whose text is contained in the prompt, in a hit already kept, or (chat) in the
   system prompt or an earlier turn, is dropped, and so is one whose cosine with the prompt is under
   MIN_SCORE (0.1: unrelated);
3. re-rank: by score, ties by the shorter text (more room for others);
4. budget: hits are kept best first while their tokens (the model's tokenizer) fit in
   ``recycle_budget`` tokens; at most ``recycle_k`` of them;
5. the kept texts go before the prompt as a context block:

       <rsu 1>\n<rsu 2>\n...\n\n<prompt>

   and the generation's result lists them in ``result.recycled`` (the provenance: id, score,
   source, text). In chat (``session.chat(..., recycle=bank)``) the block goes before the user's
   text inside that user turn, which the chat history keeps as the model read it.

This changes the output (the prompt is longer): it is a lossy memory, unlike the lossless
drafters of speculative decoding, which may take the same texts as candidate continuations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_K = 5
DEFAULT_BUDGET = 256
MIN_SCORE = 0.1        # hits less similar than this to the prompt are never put in
SEPARATOR = "\n"


@dataclass
class Recalled:
    """One RSU put into a prompt: where it came from and what it cost."""
    id: str
    text: str
    score: float
    source: str = ""
    meta: dict = field(default_factory=dict)
    tokens: int = 0

    def __repr__(self):
        t = self.text if len(self.text) <= 50 else self.text[:47] + "..."
        return f"Recalled({self.score:.3f}, {self.source}, {t!r}, {self.tokens} tokens, id={self.id[:8]})"


def recall(bank, prompt: str, tokenizer, k: int = DEFAULT_K, budget: int = DEFAULT_BUDGET, *,
           seen: str = "") -> list:
    """The RSUs for ``prompt`` (steps 1-4 of the module's docstring), best first. ``seen``: text the
    model already reads besides the prompt (a chat's system prompt and earlier turns); a unit it
    contains is not put in again."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"recycle_k must be a positive int, got {k!r}")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"recycle_budget must be a positive number of tokens, got {budget!r}")
    if not hasattr(bank, "search"):
        raise TypeError(f"recycle= takes a bank with a search(query, k) method (ryzjupyter.RecycleBank), "
                        f"got {type(bank).__name__}")
    counted = hasattr(bank, "count_uses")    # RecycleBank: count the units put in, not every one looked at
    found = bank.search(prompt, k=2 * k, count_use=False) if counted else bank.search(prompt, k=2 * k)
    hits = sorted(found, key=lambda h: (-float(h.score), len(h.text)))
    kept, used = [], 0
    for h in hits:
        text = h.text.strip()
        if (not text or float(h.score) < MIN_SCORE or text in prompt or (seen and text in seen)
                or any(text in r.text for r in kept)):
            continue
        n = len(tokenizer.encode(text + SEPARATOR, add_special_tokens=False)) if tokenizer is not None else len(text.split())
        if used + n > budget:
            continue
        kept.append(Recalled(id=str(h.id), text=text, score=float(h.score), source=getattr(h, "source", ""),
                             meta=dict(getattr(h, "meta", {}) or {}), tokens=n))
        used += n
        if len(kept) == k:
            break
    if counted and kept:
        bank.count_uses([r.id for r in kept])
    return kept


def with_context(prompt: str, recalled: list) -> str:
    """The prompt with the recalled texts before it (step 5)."""
    if not recalled:
        return prompt
    return SEPARATOR.join(r.text for r in recalled) + SEPARATOR + SEPARATOR + prompt
