"""Bundled demo models (see demo/MODEL_CARD.md): trained by ``ryzjupyter.train`` on the King James Bible.

``demo``        tiny BitNet b1.58 (packed ternary, transformers ``BitNetForCausalLM`` layout), the default model
``demo-draft``  a smaller BitNet b1.58 with the same tokenizer, the draft for speculative decoding

This folder is the one place that knows where bundled models live; the loader, the model manager
and the widgets ask it.
"""
from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "demo"


def bundled_names() -> list[str]:
    """Names of the bundled models (sub-folders with a config.json), sorted."""
    try:
        return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())
    except OSError:
        return []


def is_bundled(name) -> bool:
    """True when `name` is the name of a bundled model."""
    return isinstance(name, str) and name in bundled_names()
