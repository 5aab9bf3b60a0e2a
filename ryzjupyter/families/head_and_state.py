"""What every recurrent family (Mamba, Mamba-2, RWKV-4, RWKV-7) builds the same way: its LM
head (its own matrix, or the tied embedding) and its fresh state (float32 arrays, per layer);
and what Mamba and Mamba-2 do alike: load a backbone (transformers' ``backbone.*`` layout)
and run a chunk of tokens through it (each family with its own mixer block).

    self.lm_head = lm_head(ck, "lm_head.weight", self.embed, c.tied)
    def fresh_state(self):
        return layer_state(c.n_layers, ((c.d_inner, c.d_conv), 0.0), ((c.d_inner, c.d_state), 0.0))
    def _load(self, ck, fmt, progress):
        load_backbone(self, ck, fmt, progress, Config, LayerWeights, "Mamba")
    def _run_chunk(self, tokens, state, want):
        return run_backbone(self, mixer_block, tokens, state, want)
"""

from __future__ import annotations

import numpy as np

from ryzjupyter.engine.checkpoint import CheckpointError, detect_kind
from ryzjupyter.families.recurrent import FLOAT_DTYPES, K, Linear, check_float


def lm_head(ck, name, embed, tied) -> Linear:
    """The float32 LM head: the checkpoint's `name` [V, D] when the config does not tie it to the
    embedding, else `embed` itself (a stored copy of the tied matrix is checked, not loaded).
    CheckpointError when the head is untied and missing."""
    shape = embed.shape
    if not tied:
        if name not in ck:
            raise CheckpointError(f"tie_word_embeddings is false but the checkpoint has no {name}; "
                                  "the checkpoint is incomplete")
        return Linear(check_float(ck, name, shape), None, "f32")
    if name in ck:
        ck.require(name, shape, FLOAT_DTYPES)
    return Linear(embed, None, "f32")


def head_nbytes(head: Linear, embed) -> int:
    """Bytes the head adds to the model: none when it is the tied embedding."""
    return 0 if head.w is embed else head.nbytes


def layer_state(n_layers, *arrays) -> list:
    """A fresh state: for each of n_layers layers, one float32 array per (shape, fill) in
    `arrays`, in that order (layer-major: layer l's arrays at l * len(arrays) ...)."""
    return [np.full(shape, fill, np.float32) for _ in range(n_layers) for shape, fill in arrays]


def load_backbone(model, ck, fmt, progress, config_cls, layer_cls, label):
    """Load a Mamba or Mamba-2 checkpoint (``backbone.embeddings``, ``backbone.layers.{l}.``,
    ``backbone.norm_f``, ``lm_head``) into `model`: CheckpointError naming `label` when the
    checkpoint is of another family than ``model.family``; then sets model.config
    (``config_cls.from_dict``), .embed [V, D], .layers (``layer_cls(ck, prefix, config, fmt)``,
    ``progress(l + 1, n_layers)`` after each), .norm_f [D], .lm_head and .vocab_size."""
    kind = detect_kind(ck.config, ck)
    if kind.family != model.family:
        raise CheckpointError(f"{model.path.name} is a {kind.family} model, not {label}")
    c = model.config = config_cls.from_dict(ck.config)
    model.embed = check_float(ck, "backbone.embeddings.weight", (c.vocab_size, c.dim))
    model.layers = []
    for l in range(c.n_layers):
        model.layers.append(layer_cls(ck, f"backbone.layers.{l}.", c, fmt))
        if progress is not None:
            progress(l + 1, c.n_layers)
    model.norm_f = check_float(ck, "backbone.norm_f.weight", (c.dim,))
    model.lm_head = lm_head(ck, "lm_head.weight", model.embed, c.tied)
    model.vocab_size = c.vocab_size


def run_backbone(model, mixer_block, tokens, state, want):
    """A chunk of tokens through a Mamba / Mamba-2 backbone (loaded by load_backbone), as the
    family's ``_run_chunk``: h = embed[ids]; per layer l, h = h + mixer_block(config, layer,
    state[2 l] (conv), state[2 l + 1] (ssm), rmsnorm(h), out); then the final norm and head on
    the rows wanted (``model._final``)."""
    c = model.config
    h = model.embed[tokens]                                   # h = embed[ids]
    x = np.empty_like(h)
    out = np.empty_like(h)
    for l, lw in enumerate(model.layers):
        K.rmsnorm(x, h, lw.norm, c.norm_eps)                  # x = rmsnorm(h)
        mixer_block(c, lw, state[2 * l], state[2 * l + 1], x, out)
        K.add(h, h, out)                                      # h = h + mixer(x)
    return model._final(h, want)


def final_rmsnorm(model, rows):
    """rmsnorm(rows, norm_f): a Mamba / Mamba-2 backbone's final norm (``_final_norm``)."""
    x = np.empty_like(rows)
    K.rmsnorm(x, rows, model.norm_f, model.config.norm_eps)
    return x
