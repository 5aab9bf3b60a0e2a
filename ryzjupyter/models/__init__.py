"""Bundled demo models (see demo/MODEL_CARD.md): trained by ``ryzjupyter.train`` on the King James Bible.

``demo``        tiny BitNet b1.58 (packed ternary, transformers ``BitNetForCausalLM`` layout), the default model
``demo-draft``  a smaller BitNet b1.58 with the same tokenizer, the draft for speculative decoding
"""
from __future__ import annotations

import os

MODELS_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = "demo"
DEFAULT_DRAFT = "demo-draft"
BUNDLED = ("demo", "demo-draft")


def bundled_path(name: str = DEFAULT_MODEL) -> str:
    """Folder of a bundled model ("demo" or "demo-draft")."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; choose one of {', '.join(BUNDLED)}")
    return os.path.join(MODELS_DIR, name)
