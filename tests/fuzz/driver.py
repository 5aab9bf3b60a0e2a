"""Run one harness under atheris (libFuzzer): `python -m tests.fuzz.driver NAME [libFuzzer args]`.

atheris.Fuzz() never returns (libFuzzer exits the process), so every harness runs in a process of
its own, started by tests/fuzz/run.py. The product's modules are imported inside
atheris.instrument_imports() so that the fuzzer sees the branches they take."""

import importlib
import os
import sys

import atheris


def main():
    name, args = sys.argv[1], sys.argv[2:]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # a model name is never a download
    with atheris.instrument_imports(include=["ryzjupyter"]):
        harness = importlib.import_module(f"tests.fuzz.harnesses.{name}")
    atheris.Setup([sys.argv[0]] + args, harness.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
