"""`bench serve` end to end on a small model: the batching records (one per stream count, ratios
against one stream from the same run, the C step breakdown) and the load test's record (none lost,
none mixed up, TTFT, RSS), written by --json and rendered by `bench report`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")
REPO = Path(__file__).resolve().parents[2]


def test_bench_serve_records(tmp_path):
    out = tmp_path / "serve.json"
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "serve", "--shape", "tiny", "--streams", "1,2,4",
                        "--decode-tokens", "4", "--repeat", "2", "--requests", "12", "--clients", "3",
                        "--model-dir", str(tmp_path / "models"), "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["bench"] == "serve" and d["machine"]["command"].startswith("python -m ryzjupyter.bench serve")
    batch = {x["streams"]: x for x in d["records"] if x["kind"] == "serve_batch"}
    assert sorted(batch) == [1, 2, 4]
    for B, x in batch.items():
        assert len(x["runs"]) == 2 and all(v > 0 for v in x["runs"]), x      # every run had all B decoding
        assert x["ratio_vs_1"] == pytest.approx(x["tok_s"] / batch[1]["tok_s"])
        assert x["ratio_runs"] == pytest.approx([a / b for a, b in zip(x["runs"], batch[1]["runs"])])
    steps = [x for x in d["records"] if x["kind"] == "serve_step"]
    assert [x["streams"] for x in steps] == [1, 2, 4] and all(x["layers_s"] > 0 and x["head_s"] > 0 for x in steps)
    # the ceiling: each phase at least one stream's, and at least B tokens' multiply-adds at the peak
    if d["native"]["isa"] != "scalar":
        l1, h1 = steps[0]["layers_s"], steps[0]["head_s"]
        for x in steps:
            B, peak = x["streams"], x["int8_peak_gops"] * 1e9
            cl, ch = 2 * B * x["layer_macs"] / peak, 2 * B * x["head_macs"] / peak
            assert x["compute_floor_s"] == pytest.approx(cl + ch)
            assert x["step_floor_s"] == pytest.approx(max(l1, cl) + max(h1, ch))
            assert x["ceiling_vs_1"] == pytest.approx(B * (l1 + h1) / x["step_floor_s"])
            assert 1 <= x["ceiling_vs_1"] <= B + 1e-9
        assert steps[0]["ceiling_vs_1"] == pytest.approx(1.0)
    else:
        assert all("ceiling_vs_1" not in x for x in steps)      # no SIMD peak to bound it with
    load = [x for x in d["records"] if x["kind"] == "serve_load"]
    assert len(load) == 1
    load = load[0]
    assert (load["requests"], load["clients"], load["lost"], load["mixed"]) == (12, 3, 0, 0)
    assert 0 < load["ttft_p50_s"] <= load["ttft_p99_s"] and load["serving_after"]
    assert load["rss_before"] > 10 * 2 ** 20
    rep = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "report", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert rep.returncode == 0, rep.stderr
    assert "| 4 |" in rep.stdout and "0 lost, 0 mixed up" in rep.stdout
    assert ("The ceiling" in rep.stdout) == (d["native"]["isa"] != "scalar")
