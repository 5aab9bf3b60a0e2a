"""The safetensors reader (engine/checkpoint.py SafetensorsFile): the bytes are a whole
*.safetensors file; its header is parsed and checked, then every tensor it lists is read and
widened to float32. Allowed: the tensors, or a CheckpointError."""

import os
import tempfile
from pathlib import Path

import numpy as np

from ryzjupyter.engine.checkpoint import CheckpointError, SafetensorsFile, to_f32

from ..common import Finding, expect

_DIR = Path(tempfile.mkdtemp(prefix="ryz-fuzz-st-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
_PATH = _DIR / "model.safetensors"


def _read_all(f):
    for name, info in f.tensors.items():
        arr = f.raw(name)
        if arr.shape != tuple(info.shape) or arr.nbytes != info.nbytes:
            raise Finding(f"tensor {name!r} read as {arr.shape} ({arr.nbytes} bytes), header says "
                          f"{info.shape} ({info.nbytes} bytes)")
        if info.dtype in ("F32", "F16", "F64", "BF16"):
            to_f32(arr, info.dtype)
    f.close()


def one_input(data: bytes):
    _PATH.write_bytes(data)
    f = expect(lambda: SafetensorsFile(_PATH), CheckpointError)
    if f is not None:
        expect(lambda: _read_all(f), CheckpointError)
