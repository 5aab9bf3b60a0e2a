"""The in-context copy mix: training sequences in which a passage recurs, so that the model learns to read its
context (``train.py --copy-frac F --copy-sources ...``).

A training row is ``width = ctx + 1`` tokens. Row k of the run (k = step * batch + r, counted over the whole run)
is a copy sequence when ``floor((k + 1) * F) > floor(k * F)``: exactly ``floor(N * F)`` of the first N rows, spread
evenly; the other rows are random windows of the plain training stream, drawn exactly as without the mix (the
plain rows use the trainer's random generator in the same order, so ``--copy-frac 0`` is today's training).

A copy sequence (CopySequences.sequence), with its own generator (seeded from the trainer's seed):
  * a source is chosen uniformly (so a small source is not swamped by a large one), then a passage of P tokens
    (P uniform in [min_passage, max_passage], max_passage <= width // 2) at a random place of that source's
    token stream (its documents tokenized one by one and concatenated);
  * the row is  filler[pre] + passage + filler[gap] + passage[o : o + L] + filler[rest]: the gap is 0 (the passage
    repeated at once) a third of the time, otherwise uniform; the second occurrence starts at the passage's start
    (o = 0) half of the time, otherwise at a random offset o (a passage seen once, later continued from its middle);
    L = min(P - o, what is left of the row) >= min_passage;
  * the fillers are windows of the plain training stream (the same packed documents as the plain rows).
CopyInfo records where the two occurrences are: ``row[second:second + length] == row[first + offset:first + offset
+ length]``.

Exclusion: no copy sequence (passage or filler) shares a run of EXCLUDE_N tokens with an excluded text (always
the validation text, whose slices are the passages ``python -m ryzjupyter.bench copy`` evaluates on, plus the files
of ``--copy-exclude``, e.g. the held-out documents of the copy sources, corpus.py's copy-valid.txt). A candidate
that does is drawn again. Runs are compared by 64-bit hashes; a collision can only reject a clean candidate.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random

import numpy as np

EXCLUDE_N = 16
_MUL = np.uint64(0x9E3779B97F4A7C15)
_TRIES = 1000


def ngram_hashes(ids, n: int = EXCLUDE_N) -> np.ndarray:
    """64-bit polynomial hash of every run ids[i:i + n] (len(ids) - n + 1 of them)."""
    a = np.asarray(ids, dtype=np.uint64)
    m = len(a) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64)
    h = np.zeros(m, np.uint64)
    for j in range(n):
        h = h * _MUL + a[j:j + m] + np.uint64(1)
    return h


class Exclusion:
    """The EXCLUDE_N-token runs of some texts (token id lists)."""

    def __init__(self, texts_ids, n: int = EXCLUDE_N):
        self.n = n
        hs = [ngram_hashes(t, n) for t in texts_ids]
        self.hashes = np.unique(np.concatenate(hs)) if hs else np.zeros(0, np.uint64)

    def bad_starts(self, ids) -> np.ndarray:
        """bool per run start i: ids[i:i + n] is a run of an excluded text."""
        h = ngram_hashes(ids, self.n)
        if not len(self.hashes) or not len(h):
            return np.zeros(len(h), bool)
        i = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        return self.hashes[i] == h

    def index(self, ids) -> "CleanIndex":
        return CleanIndex(self.bad_starts(ids), self.n)


class CleanIndex:
    """Answers "does ids[s:e] contain an excluded run?" in O(1) (prefix counts of the bad run starts)."""

    def __init__(self, bad: np.ndarray, n: int):
        self.n = n
        self.count = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])

    def clean(self, s: int, e: int) -> bool:
        last = e - self.n + 1            # runs starting in [s, last) lie inside [s, e)
        return last <= s or self.count[last] == self.count[s]


@dataclasses.dataclass
class CopyInfo:
    source: str
    source_start: int  # the passage is the source's tokens [source_start:source_start + passage]
    first: int      # the passage occupies row[first:first + passage]
    passage: int
    second: int     # its second occurrence: row[second:second + length] == row[first + offset:...]
    offset: int
    length: int
    gap: int        # tokens of filler between the two occurrences


def is_copy_row(k: int, frac: float) -> bool:
    return math.floor((k + 1) * frac) > math.floor(k * frac)


def source_name(path: str) -> str:
    """copy-pydoc-train.txt -> pydoc; any other file: its name without the extension."""
    base = os.path.basename(path)
    if base.startswith("copy-") and base.endswith("-train.txt"):
        return base[len("copy-"):-len("-train.txt")]
    return os.path.splitext(base)[0]


def tokenize_documents(tok, docs: list[list[str]]) -> np.ndarray:
    """Each document (a list of lines) as one text, lines joined with newlines; the token streams concatenated."""
    enc = tok.encode_batch(["\n".join(d) + "\n" for d in docs], add_special_tokens=False)
    return np.fromiter((i for e in enc for i in e.ids), dtype=np.int64)


class CopySequences:
    """Builds copy sequences of `width` tokens (see the module docstring)."""

    def __init__(self, sources: list[tuple[str, np.ndarray]], stream: np.ndarray, width: int,
                 exclusion: Exclusion, min_passage: int = 16, max_passage: int = 0):
        self.width = int(width)
        self.min_passage = int(min_passage)
        self.max_passage = int(max_passage or self.width // 2)
        if self.min_passage < 1 or self.max_passage < self.min_passage or self.max_passage > self.width // 2:
            raise ValueError(f"passage lengths must satisfy 1 <= min ({self.min_passage}) <= max "
                             f"({self.max_passage}) <= width // 2 ({self.width // 2})")
        if not sources:
            raise ValueError("the copy mix needs at least one source")
        self.exclusion = exclusion
        self.sources = []
        for name, ids in sources:
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids) < self.max_passage:
                raise ValueError(f"copy source {name!r} has {len(ids)} tokens, fewer than a passage "
                                 f"({self.max_passage})")
            self.sources.append((name, ids, exclusion.index(ids)))
        self.stream = np.asarray(stream, dtype=np.int64)
        if len(self.stream) <= self.width:
            raise ValueError(f"the training stream ({len(self.stream)} tokens) is shorter than a row ({self.width})")
        self.stream_index = exclusion.index(self.stream)
        self.rejected = 0

    def _filler(self, rng: random.Random, n: int) -> np.ndarray:
        if n == 0:
            return self.stream[:0]
        for _ in range(_TRIES):
            s = rng.randrange(len(self.stream) - n + 1)
            if self.stream_index.clean(s, s + n):
                return self.stream[s:s + n]
            self.rejected += 1
        raise RuntimeError(f"no filler of {n} tokens free of excluded text in {_TRIES} tries")

    def _passage(self, rng: random.Random) -> tuple[str, int, np.ndarray]:
        for _ in range(_TRIES):
            name, ids, index = self.sources[rng.randrange(len(self.sources))]
            P = rng.randint(self.min_passage, self.max_passage)
            s = rng.randrange(len(ids) - P + 1)
            if index.clean(s, s + P):
                return name, s, ids[s:s + P]
            self.rejected += 1
        raise RuntimeError(f"no passage free of excluded text in {_TRIES} tries")

    def sequence(self, rng: random.Random) -> tuple[np.ndarray, CopyInfo]:
        W, mp = self.width, self.min_passage
        name, start, passage = self._passage(rng)
        P = len(passage)
        o = 0 if rng.random() < 0.5 else rng.randint(0, P - mp)
        free = W - P - mp
        gap = 0 if rng.random() < 1 / 3 else rng.randint(0, free)
        pre = rng.randint(0, free - gap)
        second = pre + P + gap
        L = min(P - o, W - second)
        row = np.concatenate([self._filler(rng, pre), passage, self._filler(rng, gap), passage[o:o + L],
                              self._filler(rng, W - second - L)])
        return row, CopyInfo(name, start, pre, P, second, o, L, gap)


def batch_rows(stream: np.ndarray, width: int, batch: int, step: int, rng: random.Random,
               mix: CopySequences | None = None, frac: float = 0.0, copy_rng: random.Random | None = None):
    """The rows of one training step: [batch, width] int64 and, per row, its CopyInfo (None for a plain row)."""
    rows, infos = [], []
    for r in range(batch):
        if mix is not None and frac > 0 and is_copy_row(step * batch + r, frac):
            row, info = mix.sequence(copy_rng)
        else:
            s = rng.randrange(len(stream) - width)
            row, info = stream[s:s + width], None
        rows.append(row)
        infos.append(info)
    return np.stack(rows), infos


def probe_passages(ids, n: int, length: int) -> list[list[int]]:
    """n slices of `length` tokens spread evenly over ids (bench copy's rule)."""
    starts = sorted(set(np.linspace(0, len(ids) - length, n).astype(int).tolist()))
    return [list(ids[s:s + length]) for s in starts]


def second_over_first(model, ids, ctx: int, n: int = 8, length: int = 192) -> float:
    """A cheap copy probe during training: over n held-out passages, each doubled in one forward pass, the
    perplexity of the second occurrence's tokens 1..P-1 over that of the first's (bench copy's second figure)."""
    import torch
    import torch.nn.functional as F

    P = min(length, ctx // 2, len(ids))
    if P < 2:
        return float("nan")
    first, second = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for p in probe_passages(ids, n, P):
            x = torch.tensor([p + p])
            nll = F.cross_entropy(model(x[:, :-1]).float()[0], x[0, 1:], reduction="none").double()
            first.append(float(nll[:P - 1].mean()))
            second.append(float(nll[P:2 * P - 1].mean()))
    model.train(was_training)
    return math.exp(sum(second) / len(second)) / math.exp(sum(first) / len(first))
