"""The sampler: logits of one step -> one token id.

The order and the rules are those of transformers' generate(): repetition penalty (over every
token in the context, prompt included), then temperature, top-k, top-p, min-p, then one draw
from the softmax. temperature == 0 is greedy (argmax; ties go to the lowest id, like torch).

The sampler owns its random generator (numpy PCG64 seeded per generation) and draws exactly one
uniform number per sampled step, so a seed and the settings fix the tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class SamplingSettings:
    """The sampling options of ``generate`` / ``stream`` / ``chat`` (keyword arguments of the
    same names), applied in transformers' order.

    Attributes:
        temperature: 0 = greedy (argmax, ties to the lowest id); otherwise logits / temperature.
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set of tokens with probability >= top_p (1 = off).
        min_p: drop tokens with probability < min_p x the top one's (0 = off).
        repetition_penalty: > 1 discourages tokens already in the context, prompt included
            (1 = off).
        seed: the random seed; None draws a fresh one, recorded in the result's ``settings``.
    """
    temperature: float = 0.8         # 0 = greedy; otherwise logits / temperature
    top_k: int = 40                  # keep the k most likely tokens (0 = off)
    top_p: float = 0.95              # keep the smallest set with probability >= top_p (1 = off)
    min_p: float = 0.05              # drop tokens with p < min_p * p_max (0 = off)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context (1 = off)
    seed: int | None = None          # None: a fresh random seed, recorded in the result

    def validate(self) -> "SamplingSettings":
        def num(name, v):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
            return v

        t = num("temperature", self.temperature)
        if t < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {t}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)):
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        p = num("top_p", self.top_p)
        if not 0 < p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {p}")
        m = num("min_p", self.min_p)
        if not 0 <= m <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {m}")
        r = num("repetition_penalty", self.repetition_penalty)
        if r <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {r}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
                raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")
        self.temperature, self.top_k, self.top_p, self.min_p = t, int(self.top_k), p, m
        self.repetition_penalty = r
        self.seed = None if self.seed is None else int(self.seed)
        return self

    def as_dict(self):
        return asdict(self)


def apply_repetition_penalty(logits, context_ids, penalty):
    """HF RepetitionPenaltyLogitsProcessor: for each distinct token already seen,
    logit < 0 -> logit * penalty, else logit / penalty."""
    if penalty == 1.0 or len(context_ids) == 0:
        return logits
    ids = np.unique(np.asarray(context_ids, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < logits.shape[-1])]
    s = logits[ids]
    logits[ids] = np.where(s < 0, s * penalty, s / penalty)
    return logits


def filter_logits(logits, top_k=0, top_p=1.0, min_p=0.0):
    """Set excluded logits to -inf, in HF order top-k, top-p, min-p (always keeping one token).
    Full-vocabulary reference version; the sampler uses the faster `candidates`."""
    n = logits.shape[-1]
    if top_k and top_k < n:
        kth = np.partition(logits, n - top_k)[n - top_k]
        logits[logits < kth] = -np.inf                      # ties with the k-th are kept, as in HF
    if top_p < 1.0:
        order = np.argsort(logits, kind="stable")           # ascending, as HF TopPLogitsWarper
        sl = logits[order].astype(np.float64)
        probs = np.exp(sl - sl[-1])
        probs /= probs.sum()
        cum = np.cumsum(probs)
        remove = cum <= (1 - top_p)
        remove[-1] = False                                  # min_tokens_to_keep = 1
        logits[order[remove]] = -np.inf
    if min_p > 0.0:
        mx = logits.max()
        probs = np.exp((logits - mx).astype(np.float64))
        probs /= probs.sum()
        remove = probs < min_p * probs.max()
        if remove.all():
            remove[np.argmax(probs)] = False
        logits[remove] = -np.inf
    return logits


def candidates(x, top_k=0, top_p=1.0, min_p=0.0):
    """The tokens that survive top-k, top-p and min-p (same rules as filter_logits) and their
    probabilities, without sorting the whole vocabulary: returns (ids ascending, p float64 summing
    to 1). x: float32 logits already divided by the temperature."""
    n = x.shape[0]
    if top_k and top_k < n:
        kth = np.partition(x, n - top_k)[n - top_k]
        idx = np.flatnonzero(x >= kth)                      # ties with the k-th are kept
    else:
        idx = np.arange(n)
    z = x[idx].astype(np.float64)
    z = np.exp(z - z.max())
    p = z / z.sum()
    if top_p < 1.0:
        rest_mass = 0.0
        for m in (1024, 16384):
            # the removed set is the low tail whose mass is <= 1 - top_p: if the top m hold at
            # least top_p of the mass, everything outside them is removed, so sort only those
            if idx.size <= 2 * m:
                break
            top = np.sort(np.argpartition(p, idx.size - m)[idx.size - m:])
            mass = p[top].sum()
            if mass >= top_p:
                rest_mass = max(0.0, 1.0 - mass)
                idx, p = idx[top], p[top]
                break
        order = np.lexsort((idx, p))                        # ascending p, as HF TopPLogitsWarper
        cum = rest_mass + np.cumsum(p[order])
        remove = cum <= (1 - top_p)
        remove[-1] = False                                  # min_tokens_to_keep = 1
        keep = np.sort(order[~remove])
        idx, p = idx[keep], p[keep]
        p = p / p.sum()
    if min_p > 0.0:
        keep = p >= min_p * p.max()
        idx, p = idx[keep], p[keep]
        p = p / p.sum()
    return idx, p


def softmax(logits):
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


class Sampler:
    """Seeded sampler for one generation. `sample(logits, context_ids)` -> token id."""

    def __init__(self, settings: SamplingSettings):
        self.settings = settings.validate()
        if self.settings.seed is None:
            self.settings.seed = int(np.random.SeedSequence().entropy % (2 ** 63))
        self.rng = np.random.Generator(np.random.PCG64(self.settings.seed))

    def _prepare(self, logits, context_ids):
        s = self.settings
        x = np.asarray(logits).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise FloatingPointError("the model produced non-finite logits (NaN or inf); the weights are "
                                     "damaged or the computation overflowed")
        if s.repetition_penalty != 1.0:
            x = apply_repetition_penalty(np.array(x, np.float32), context_ids, s.repetition_penalty)
        return x

    def candidates(self, logits, context_ids=()):
        """(token ids, probabilities) the next draw chooses from."""
        s = self.settings
        x = self._prepare(logits, context_ids)
        if s.temperature == 0.0:
            return np.array([int(np.argmax(x))]), np.ones(1)
        x = np.asarray(x, np.float32) / np.float32(s.temperature)
        return candidates(x, s.top_k, s.top_p, s.min_p)

    def probs(self, logits, context_ids=()):
        """The full distribution the sampler draws from (after penalty and filters), float64."""
        idx, p = self.candidates(logits, context_ids)
        out = np.zeros(np.asarray(logits).size, np.float64)
        out[idx] = p
        return out

    def sample(self, logits, context_ids=()) -> int:
        if self.settings.temperature == 0.0:
            return int(np.argmax(self._prepare(logits, context_ids)))
        idx, p = self.candidates(logits, context_ids)
        u = self.rng.random()                               # one coin per step
        cdf = np.cumsum(p)
        i = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(p) - 1)
        return int(idx[i])
