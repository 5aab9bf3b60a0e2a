"""config.json and model.safetensors.index.json as ryzjupyter.load reads them: the first byte picks
the file and the tiny fixture it goes into (the packed BitNet, the 1bitLLM and the float fixtures'
config.json; the sharded fixture's index), the rest is that file's text. A model that loads must
also run: two greedy tokens of a short prompt. Allowed: the tokens, or a CheckpointError; where the
config's context (max_position_embeddings) is shorter than the prompt, the ValueError that says so."""

import os
import shutil
import tempfile
from pathlib import Path

import ryzjupyter
from ryzjupyter.engine.checkpoint import CheckpointError

from ..common import Finding, expect

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bitnet"
TARGETS = (("packed", "config.json"), ("onebitllm", "config.json"), ("float_noquant", "config.json"),
           ("sharded", "model.safetensors.index.json"))
_TMP = Path(tempfile.mkdtemp(prefix="ryz-fuzz-cfg-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def _folder(fixture):
    """A copy of the fixture whose files are links, but for the one the input replaces."""
    d = _TMP / fixture
    if not d.is_dir():
        d.mkdir()
        for f in (FIXTURES / fixture).iterdir():
            if not f.name.startswith("reference"):
                (d / f.name).symlink_to(f)
    return d


def _load_and_run(folder):
    model = ryzjupyter.load(str(folder), convert_cache=False)
    try:
        prompt = [1, 2, 3]
        if model.max_context < len(prompt):     # a legal if useless config: the prompt must be refused
            expect(lambda: model.generate(prompt, max_new_tokens=2, temperature=0), ValueError)
            return
        out = model.generate(prompt, max_new_tokens=2, temperature=0)
    finally:
        model.close()
    if not isinstance(out, (str, list)) and not hasattr(out, "tokens"):
        raise Finding(f"generate returned {type(out).__name__}")


def one_input(data: bytes):
    if not data:
        return
    fixture, filename = TARGETS[data[0] % len(TARGETS)]
    folder = _folder(fixture)
    target = folder / filename
    target.unlink(missing_ok=True)
    try:
        target.write_bytes(data[1:])
        expect(lambda: _load_and_run(folder), CheckpointError)
    finally:
        target.unlink(missing_ok=True)
        target.symlink_to(FIXTURES / fixture / filename)
