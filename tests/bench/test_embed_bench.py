"""`bench embed` runs end to end on a few texts, beside sentence-transformers, and its record
renders with `bench report` (the table docs/performance.md embeds)."""
import json
import subprocess
import sys

import pytest


def test_bench_embed_record_and_report(tmp_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is in the ci extra")
    out = tmp_path / "embed.json"
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "embed", "--texts", "7", "--repeat", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["bench"] == "embed" and d["machine"]["command"].startswith("python -m ryzjupyter.bench embed")
    rec = d["records"][0]
    assert rec["texts"] == 7 and len(rec["ours_runs"]) == len(rec["reference_runs"]) == 2
    assert rec["cosine_min"] >= 0.9999
    assert rec["ratio"] == pytest.approx(rec["ours_texts_s"] / rec["reference_texts_s"])
    rep = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "report", str(out)], capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "sentence-transformers (torch fp32)" in rep.stdout and f"{rec['ratio']:.2f}x" in rep.stdout
