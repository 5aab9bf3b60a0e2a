"""`python -m ryzjupyter.bench kernels` runs end to end (tiny --quick sizes) and writes one
JSON record per measurement with the fields docs/performance.md reads."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_kernels_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "kernels", "--quick",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT), RYZ_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr
    assert "read bandwidth" in proc.stdout and "ternary GEMV" in proc.stdout
    assert "quick attn q/o 256x256" in proc.stdout and "2560x2560" not in proc.stdout  # sizes as run
    data = json.loads(out.read_text())
    kinds = {r["kind"] for r in data["records"]}
    assert {"read_bandwidth", "gemv", "gemv_model_pass", "gemm", "layout_gemv", "lm_head_gemv",
            "layout_model_pass", "layout_gemm"} <= kinds
    assert {r["format"] for r in data["records"] if r["kind"] == "lm_head_gemv"} == {"int8", "int4"}
    assert {r["layout"] for r in data["records"] if r["kind"] == "layout_model_pass"} == {"i2", "t5"}
    assert {r["layout"] for r in data["records"] if r["kind"] == "layout_gemv"} == {"i2", "tl", "t5"}
    for r in data["records"]:
        assert r["threads"] in (1, 2) and r["repeat"] >= 1 and r["isa"]
        if r["kind"] == "gemv":
            assert r["gbps"] > 0 and 0 < r["frac_bw"] and r["M"] == 1
        if r["kind"] == "lm_head_gemv":
            assert r["gbps"] > 0 and r["frac_bw"] > 0 and r["bytes"] > 0
        if r["kind"] == "gemm":
            assert r["gops"] > 0 and r["M"] >= 1
        if r["kind"] in ("layout_model_pass", "layout_gemm"):
            assert r["seconds"] > 0 and r["t5_over_i2"] > 0


def test_bench_help():
    proc = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "kernels", "--help"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert proc.returncode == 0 and "--repeat" in proc.stdout and "--json" in proc.stdout


def test_probe_read_counts_the_aligned_pages():
    # probe_read times the whole 4 KiB-aligned part of the buffer (both access patterns on
    # AVX-512, the faster kept): bytes are exactly those pages, the time is a real duration
    import numpy as np
    from ryzjupyter import _native
    buf = np.ones((4 << 20) + 8192, np.uint8)[1000:]   # starts off a page boundary
    p = buf.ctypes.data
    start = (p + 4095) // 4096 * 4096
    pages = (buf.size - (start - p)) // 4096
    for threads in (1, 2):
        seconds, nbytes = _native.probe_read(buf, threads)
        assert nbytes == pages * 4096
        assert 0 < seconds < 5
