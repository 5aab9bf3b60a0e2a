"""Replay a harness's committed corpus through its target, without atheris's mutation or
libFuzzer: `python -m tests.fuzz.replay NAME [FILE ...]` (default: every file in
tests/fuzz/corpus/NAME/, seeds, cases and crashes, in name order).

Each input's name is printed before it runs, so a segfault or a sanitizer report names the input
that caused it. Exit status 0 when every input got an allowed outcome, 1 at the first Finding.
tests/fuzz/test_fuzz.py runs it in a process of its own for native_args (a native crash would end
pytest), and .ci/run runs it against the AddressSanitizer/UndefinedBehaviorSanitizer build."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path

from .common import Finding

CORPUS = Path(__file__).resolve().parent / "corpus"


def corpus_files(name: str) -> list[Path]:
    folder = CORPUS / name
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no corpus for harness {name!r} in {folder}")
    return files


def replay(name: str, paths=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # a model name is never a download
    harness = importlib.import_module(f"tests.fuzz.harnesses.{name}")
    paths = [Path(p) for p in paths] if paths else corpus_files(name)
    for p in paths:
        print(f"replay {name}/{p.name}", flush=True)
        try:
            harness.one_input(p.read_bytes())
        except Finding:
            print(f"FINDING on {p}:\n{traceback.format_exc()}", flush=True)
            return 1
    print(f"{name}: {len(paths)} inputs replayed, no finding", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(replay(sys.argv[1], sys.argv[2:]))
