"""`python -m ryzjupyter.bench kernels` runs end to end (tiny --quick sizes) and writes one
JSON record per measurement with the fields docs/performance.md reads."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    peaks = [r for r in data["records"] if r["kind"] == "int8_peak"]
    if data["native"]["isa"] == "scalar":
        assert not peaks and "none at the scalar level" in proc.stdout
    else:   # the peak of the level in use, for each thread count, and the GEMMs against it
        assert {r["threads"] for r in peaks} == {1, 2} and {r["level"] for r in peaks} == {data["native"]["isa"]}
        assert all(r["gops"] > 0 for r in peaks)
        for r in data["records"]:
            if r["kind"] == "gemm":
                peak = next(p["gops"] for p in peaks if p["threads"] == r["threads"])
                assert r["frac_peak"] == pytest.approx(r["gops"] / peak)
    m = data["machine"]
    assert m["command"] == f"python -m ryzjupyter.bench kernels --quick --json {out}"
    assert m["isa"] == data["native"]["isa"] and m["probe_loops"]["read"] in ("avx512", "avx2", "scalar")
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
