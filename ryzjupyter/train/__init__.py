"""Training package for the bundled demo models (BitNet b1.58, quantization-aware training).

Needs the ``[train]`` extra (torch, tokenizers, safetensors, numpy); the runtime package never imports it.

Rebuild everything (see ryzjupyter/models/demo/MODEL_CARD.md for the exact commands used):

    python -m ryzjupyter.train.corpus --out-dir /tmp/kjv          # needs Debian bible-kjv
    python -m ryzjupyter.train.train --corpus /tmp/kjv/kjv-train.txt --valid /tmp/kjv/kjv-valid.txt ...
"""
