"""`python -m ryzjupyter.selfcheck` (named in the README): a quick report by default (ISA level,
kernel variants, threads, a spot check), the kernel benchmark only with --bench."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ryzjupyter import native_info

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, timeout=300):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.selfcheck", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return r, time.monotonic() - t0


def test_selfcheck_quick_report():
    r, seconds = _run()
    assert r.returncode == 0, r.stderr[-2000:]
    info = native_info()
    lines = r.stdout.splitlines()
    assert f"ISA level      {info['isa']} (best on this CPU: {info['best_isa']}" in r.stdout
    assert any(ln.startswith(f"threads        {info['threads']} ") for ln in lines)
    for kernel, level in info["kernels"].items():          # every kernel with the variant it runs
        assert any(ln.split() == [kernel, level] for ln in lines), kernel
    assert f"quantize_rows_i8 [{info['isa']}] matches numpy: True" in r.stdout
    assert "GB/s" not in r.stdout and "GEMV" not in r.stdout         # no benchmark by default
    assert seconds < 20, seconds                 # a few seconds (the interpreter start included)


def test_selfcheck_forced_level_and_json():
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.selfcheck", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), RYZ_ISA="scalar"))
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["isa"] == "scalar" and set(info["kernels"].values()) == {"scalar"}


def test_selfcheck_bench_option_measures():
    r, _ = _run("--bench", "--quick")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "matches numpy: True" in r.stdout
    assert "GEMV" in r.stdout
