"""The fuzz harnesses in CI: each runs for RYZ_FUZZ_SECONDS (default 10) from its committed corpus
in a process of its own (tests/fuzz/run.py), and every input that ever crashed one is replayed here
too. The runner itself is checked on a harness that fails on purpose: a segfault, an escaped
exception and a hang are each reported with the input that caused them."""

import os
from pathlib import Path

import pytest

from .run import CORPUS, HARNESSES, run_harness


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_finds_nothing(name):
    result = run_harness(name)
    assert result.ok, result.report()
    assert result.executions > 0, result.report()


_IN_PROCESS = [p for name in HARNESSES if name != "native_args"            # a native crash would end pytest
               for p in sorted((CORPUS / name).glob("crash-*"))]


@pytest.mark.parametrize("path", _IN_PROCESS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regression_case(path, monkeypatch):
    """Every crash found while building the harnesses stays fixed (the fuzz run replays them as
    well; here each is a test of its own, named after the bug)."""
    import importlib

    from ryzjupyter.engine import tokenizer
    # what a harness module sets when imported (a shorter template time bound, an environment
    # variable) is put back after the test
    monkeypatch.setattr(tokenizer, "CHAT_TEMPLATE_SECONDS", tokenizer.CHAT_TEMPLATE_SECONDS)
    monkeypatch.setenv("RYZ_FUZZ_SECRET", "")
    harness = importlib.import_module(f"tests.fuzz.harnesses.{path.parent.name}")
    harness.one_input(path.read_bytes())


@pytest.mark.parametrize("how,kind", [("segv", "crash"), ("keyerror", "crash"), ("hang", "timeout")])
def test_runner_reports_failures_with_their_input(monkeypatch, how, kind):
    monkeypatch.setenv("RYZ_FUZZ_SELFTEST", how)
    monkeypatch.setenv("RYZ_FUZZ_INPUT_TIMEOUT", "2")
    monkeypatch.setenv("RYZ_FUZZ_FINDINGS", os.environ.get("TMPDIR", "/tmp") + "/ryz-fuzz-selftest")
    result = run_harness("selftest", 3)
    assert not result.ok
    assert [f[0] for f in result.findings] == [kind], result.report()
    assert Path(result.findings[0][1]).is_file()
    text = result.report()
    assert "selftest: FAILED" in text and f"{kind} input" in text
    if how == "segv":
        assert "deadly signal" in text
    if how == "keyerror":
        assert "KeyError" in text
