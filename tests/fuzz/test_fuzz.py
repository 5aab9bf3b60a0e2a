"""The fuzz harnesses in CI: each runs for RYZ_FUZZ_SECONDS (default 10) from its committed corpus
in a process of its own (tests/fuzz/run.py), and its whole corpus (every input that ever crashed
one among them) is replayed here too, without the fuzzer (tests/fuzz/replay.py). The runner itself
is checked on a harness that fails on purpose: a segfault, an escaped exception and a hang are
each reported with the input that caused them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .run import CORPUS, HARNESSES, ROOT, _signal_name, run_harness


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_finds_nothing(name):
    result = run_harness(name)
    assert result.ok, result.report()
    assert result.executions > 0, result.report()


_IN_PROCESS = [p for name in HARNESSES if name != "native_args"            # a native crash would end pytest
               for p in sorted((CORPUS / name).iterdir())]


@pytest.mark.parametrize("path", _IN_PROCESS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regression_case(path, monkeypatch):
    """The committed corpus replayed through each harness's target, without atheris's mutation:
    every crash found while building the harnesses (crash-*) stays fixed, every input once accepted
    wrongly (case-*) and every seed gets an allowed outcome; each file is a test of its own, named
    after the bug."""
    import importlib

    from ryzjupyter.engine import tokenizer
    # what a harness module sets when imported (a shorter template time bound, an environment
    # variable) is put back after the test
    monkeypatch.setattr(tokenizer, "CHAT_TEMPLATE_SECONDS", tokenizer.CHAT_TEMPLATE_SECONDS)
    monkeypatch.setenv("RYZ_FUZZ_SECRET", "")
    harness = importlib.import_module(f"tests.fuzz.harnesses.{path.parent.name}")
    harness.one_input(path.read_bytes())


def test_native_corpus_replays():
    """native_args' corpus through its target in a process of its own (a regression there is a
    segfault): every input ends cleanly, and each crash-* case still names a binding this build
    has (`@NAME` first: the bytes after it keep their meaning when bindings are added)."""
    from ryzjupyter import _native
    cases = sorted((CORPUS / "native_args").glob("crash-*"))
    assert cases, "native_args keeps no regression case"
    for p in cases:
        head = p.read_bytes().partition(b"\n")[0]
        assert head.startswith(b"@") and hasattr(_native, head[1:].decode()), f"{p.name} names no binding: {head!r}"
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.replay", "native_args"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = proc.stdout.splitlines()
    last = next((s for s in reversed(out) if s.startswith("replay ")), "(before the first input)")
    assert proc.returncode == 0, (f"exit status {proc.returncode}{_signal_name(proc.returncode)} at "
                                  f"{last[len('replay '):]}\n" + "\n".join(out[-30:]))
    assert out[-1] == f"native_args: {len(list((CORPUS / 'native_args').iterdir()))} inputs replayed, no finding"


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
