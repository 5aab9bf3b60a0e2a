"""Training package for the bundled demo models (BitNet b1.58, quantization-aware training).

Needs the ``[train]`` extra (torch, tokenizers, safetensors, numpy); the runtime package never imports it.

Rebuild everything (see ryzjupyter/models/demo/MODEL_CARD.md for the exact commands used):

    python -m ryzjupyter.train.corpus --out-dir /tmp/kjv          # needs Debian bible-kjv
    python -m ryzjupyter.train.train --corpus /tmp/kjv/kjv-train.txt --valid /tmp/kjv/kjv-valid.txt ...

Retrain both models at context 1024 with the in-context copy mix (copymix.py; hours of CPU, see the card's
"Retraining" section), into a new folder:

    python -m ryzjupyter.train.retrain --work /tmp/kjv --out-dir /tmp/retrained --parallel
"""
