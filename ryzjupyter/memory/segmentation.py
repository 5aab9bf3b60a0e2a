"""Cutting a text into recycled semantic units (RSUs).

    pieces = segment(text, encoder, threshold=0.35, max_tokens=128)

1. The text is split at sentence boundaries: blank lines (paragraphs, cells), and inside a
   paragraph after ``.``, ``!``, ``?`` or ``:`` followed by white space (newlines inside a
   paragraph are kept as they are: code and lists stay together).
2. The sentences are embedded (one batch); a unit grows sentence by sentence while the next
   sentence's cosine with the unit so far (the normalised mean of its sentences' vectors) stays
   at or above ``threshold`` and the unit stays within ``max_tokens`` embedder tokens; where the
   similarity drops, or the budget is full, a new unit starts.
3. A sentence longer than ``max_tokens`` on its own is cut into pieces of whole words that fit.
"""

from __future__ import annotations

import re

import numpy as np

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+")


def split_sentences(text: str) -> list:
    """Sentences (and paragraph pieces) of ``text``, stripped, none empty."""
    out = []
    for para in _PARAGRAPHS.split(text):
        for s in _SENTENCE_END.split(para.strip()):
            if s.strip():
                out.append(s.strip())
    return out


def _token_count(encoder, texts: list) -> list:
    return [len(ids) - 2 for ids in encoder.tokenize(texts)]  # without [CLS] and [SEP]


def _cut_long(sentence: str, encoder, max_tokens: int) -> list:
    """Pieces of whole words, each within max_tokens tokens (a word longer than that stays alone:
    the embedder truncates it)."""
    words = sentence.split()
    counts = _token_count(encoder, words)
    pieces, cur, n = [], [], 0
    for w, c in zip(words, counts):
        if cur and n + c > max_tokens:
            pieces.append(" ".join(cur))
            cur, n = [], 0
        cur.append(w)
        n += c
    if cur:
        pieces.append(" ".join(cur))
    return pieces


def segment(text: str, encoder, threshold: float = 0.35, max_tokens: int = 128) -> list:
    """RSU texts of ``text`` (see the module's docstring); an empty text gives []."""
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    sentences = []
    for s, c in zip(split := split_sentences(text), _token_count(encoder, split)):
        sentences.extend(_cut_long(s, encoder, max_tokens) if c > max_tokens else [s])
    if len(sentences) <= 1:
        return sentences
    counts = _token_count(encoder, sentences)
    vecs = encoder.encode(sentences)
    units, cur, total, acc = [], [sentences[0]], counts[0], vecs[0].astype(np.float64)
    for s, c, v in zip(sentences[1:], counts[1:], vecs[1:]):
        centre = acc / max(np.linalg.norm(acc), 1e-12)
        if float(centre @ v) >= threshold and total + c <= max_tokens:
            cur.append(s)
            total += c
            acc = acc + v
        else:
            units.append(" ".join(cur))
            cur, total, acc = [s], c, v.astype(np.float64)
    units.append(" ".join(cur))
    return units
