"""`ryzjupyter.load(path_or_hub_id, **options)`: find a checkpoint, pick its engine, load it.

    model = ryzjupyter.load("microsoft/bitnet-b1.58-2B-4T")     # hub id (cache first, offline ok)
    model = ryzjupyter.load("/models/my-bitnet")                 # a local folder
    model = ryzjupyter.load()                                     # the bundled demo model

Options: revision, local_files_only, allow_pickle (refused by default: pickle files can run
code), max_context (a smaller KV cache), lm_head ("f32" exact; "int8" or "int4": smaller and lossy, int4 the most), prefill_chunk,
progress (callable(done, total) while layers load), name, convert_cache (True: keep latent
weights quantized to ternary on disk, in $RYZ_CACHE_DIR or ~/.cache/ryzjupyter/converted, so the
next load skips the conversion; False: never; or a folder), kv_cache ("f32" exact; "f16" or
"bf16": half the cache memory and traffic, rounded; "int8": a quarter, not exact).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ryzjupyter.models import DEFAULT_MODEL, MODELS_DIR, bundled_names, is_bundled

from ryzjupyter.engine.checkpoint import CheckpointError, detect_kind, read_config, resolve_model_path

_ENGINE_OPTIONS = {"max_context", "lm_head", "prefill_chunk", "progress", "name", "convert_cache", "kv_cache",
                   "ternary_layout", "weights", "snapshots"}
_BITNET_ONLY = {"lm_head", "convert_cache", "kv_cache", "ternary_layout"}
_RECURRENT_ONLY = {"weights", "snapshots"}
_FIND_OPTIONS = {"revision", "local_files_only", "allow_pickle", "cache_dir"}


def bundled_model_path() -> Path:
    """The bundled demo model folder (ryzjupyter/models/demo, else the only model there)."""
    found = bundled_names()
    if DEFAULT_MODEL in found:
        return MODELS_DIR / DEFAULT_MODEL
    if len(found) == 1:
        return MODELS_DIR / found[0]
    if not found:
        raise CheckpointError("no model given and this ryzjupyter has no bundled model (ryzjupyter/models/ "
                              "is empty); pass a folder or a hub id, e.g. "
                              "ryzjupyter.load('microsoft/bitnet-b1.58-2B-4T')")
    raise CheckpointError(f"no model given and several bundled models exist "
                          f"({', '.join(found)}); pass one of their names")


def load(path_or_id=None, **options):
    """Load a model from a folder, a Hugging Face hub id, a bundled model's name, or (no argument)
    the bundled demo model.

    Args:
        path_or_id: a folder with ``config.json``, the weights (``*.safetensors``) and
            ``tokenizer.json``; a hub id such as ``"microsoft/bitnet-b1.58-2B-4T"`` (the local
            hub cache first, downloaded once with network access); a bundled model's name
            (``"demo"``); or None for the bundled demo model.
        **options: where to find the checkpoint:

            - ``revision``, ``local_files_only``, ``cache_dir``: as in ``huggingface_hub``.
            - ``allow_pickle`` (False): ``.bin`` pickle checkpoints are refused unless True
              (unpickling can run code).

            and how to load it:

            - ``max_context``: tokens the KV cache holds (default and upper bound: the model's).
            - ``lm_head``: ``"f32"`` (exact, default), ``"int8"`` or ``"int4"`` (smaller and
              faster to decode, lossy; docs/performance.md has their measured cost).
            - ``kv_cache``: ``"f32"`` (exact, default), ``"f16"`` or ``"bf16"`` (half the
              cache's memory and traffic, each value rounded to nearest even) or ``"int8"`` (a
              quarter, with a scale per row); docs/performance.md has their logit error.
            - ``ternary_layout``: ``"auto"`` (default, per matrix), ``"i2"``, ``"tl"`` or
              ``"t5"`` (1.6 bits a weight: faster decode, slower prefill; the same logits).
            - ``prefill_chunk``: tokens per prefill pass (default 64).
            - ``convert_cache``: True (default) keeps latent checkpoints' weights, once
              quantized to ternary, on disk (``$RYZ_CACHE_DIR`` or
              ``~/.cache/ryzjupyter/converted``) so the next load skips the conversion; False
              never; or a folder.
            - ``weights`` (Mamba, Mamba-2, RWKV): ``"f32"`` (exact, default: F32/F16/BF16
              checkpoints widened to float32) or ``"int8"`` (int8 rows, a quarter of the bytes,
              not exact; docs/performance.md has its perplexity cost).
            - ``snapshots`` (Mamba, Mamba-2, RWKV): state copies a session keeps for prefix
              reuse (default 8).
            - ``progress``: ``callable(done, total)`` called while the layers load.
            - ``name``: the model's name (default: ``path_or_id``).

    Returns:
        The model of the checkpoint's family (a ``BitNetModel`` for BitNet b1.58 and 1bitLLM
        checkpoints, ``MambaModel``, ``Mamba2Model``, ``RwkvModel``, ``Rwkv7Model``), with ``generate``, ``stream``, ``chat`` and ``logits``.

    Raises:
        TypeError: an unknown option (the message lists the valid ones).
        CheckpointError: the checkpoint is missing, damaged, of an unsupported format or family.
    """
    unknown = set(options) - _ENGINE_OPTIONS - _FIND_OPTIONS
    if unknown:
        raise TypeError(f"unknown load option(s): {', '.join(sorted(unknown))}; valid: "
                        f"{', '.join(sorted(_ENGINE_OPTIONS | _FIND_OPTIONS))}")
    if path_or_id is None:
        folder = bundled_model_path()
    elif is_bundled(path_or_id):
        folder = MODELS_DIR / path_or_id                       # a bundled model by name
    else:
        folder = resolve_model_path(path_or_id, revision=options.get("revision"),
                                    allow_pickle=options.get("allow_pickle", False),
                                    local_files_only=options.get("local_files_only"),
                                    cache_dir=options.get("cache_dir"))
    cfg = read_config(folder)
    kind = detect_kind(cfg)
    tokenizer = _load_tokenizer(folder)
    engine_opts = {k: v for k, v in options.items() if k in _ENGINE_OPTIONS}
    engine_opts.setdefault("name", str(path_or_id) if path_or_id is not None else folder.name)
    family_opts = _BITNET_ONLY if kind.family == "bitnet" else _RECURRENT_ONLY
    wrong = (_BITNET_ONLY | _RECURRENT_ONLY) - family_opts
    if set(engine_opts) & wrong:
        raise TypeError(f"load option(s) {', '.join(sorted(set(engine_opts) & wrong))} do not apply to a "
                        f"{kind.family} model; {kind.family} takes {', '.join(sorted(family_opts))} (and "
                        "max_context, prefill_chunk, progress, name)")
    if kind.family == "bitnet":
        from .bitnet import BitNetModel
        model = BitNetModel(folder, tokenizer=tokenizer, allow_pickle=options.get("allow_pickle", False),
                            **engine_opts)
        model._loader = load                                   # draft=<name> loads its draft model with it
        return model
    # other families live in their own modules: ryzjupyter/families/<family>.py with from_pretrained()
    module = {"mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv", "rwkv7": "rwkv7"}[kind.family]
    try:
        mod = importlib.import_module(f"ryzjupyter.families.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"ryzjupyter.families.{module}":
            raise
        raise CheckpointError(f"{folder.name} is a {kind.family} model, and this build of ryzjupyter has no "
                              f"{kind.family} engine") from None
    model = mod.from_pretrained(folder, tokenizer=tokenizer, allow_pickle=options.get("allow_pickle", False),
                                **engine_opts)
    model._loader = load
    return model


def _load_tokenizer(folder):
    from ryzjupyter.engine.tokenizer import Tokenizer
    if not (Path(folder) / "tokenizer.json").is_file():
        return None                                            # logits() still works; text prompts do not
    return Tokenizer.from_pretrained(folder)
