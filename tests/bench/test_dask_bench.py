"""`bench dask` end to end on a few prompts: two LocalClusters side by side (1 worker, 2 workers,
each 1 thread), the same tokens on both, the model loaded once per worker, the ratios from the
same run, written by --json and rendered by `bench report`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="distributed (dask) is in the ci extra")
REPO = Path(__file__).resolve().parents[2]


def test_bench_dask_records(tmp_path):
    out = tmp_path / "dask.json"
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "dask", "--prompts", "6", "--max-new-tokens", "5",
                        "--batch-size", "2", "--repeat", "2", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["bench"] == "dask" and d["machine"]["command"].startswith("python -m ryzjupyter.bench dask")
    assert d["outputs_identical"] is True and len(d["load_before"]) == 3
    one, two = d["records"]
    assert (one["workers"], two["workers"]) == (1, 2)
    for x in (one, two):
        assert x["tokens"] == 6 * 5 and x["prompts"] == 6 and len(x["runs"]) == 2
        assert x["model_loads"] == [1] * x["workers"]
        assert len(x["cpu_s_runs"]) == 2 and all(c > 0 for c in x["cpu_s_runs"])
    assert two["ratio_vs_1"] == pytest.approx(one["seconds"] / two["seconds"])
    assert two["ratio_runs"] == pytest.approx([a / b for a, b in zip(one["runs"], two["runs"])])
    rep = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "report", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert rep.returncode == 0, rep.stderr
    assert "| 2 x 1 |" in rep.stdout and f"**{two['ratio_vs_1']:.2f}x**" in rep.stdout
