"""`python -m ryzjupyter.bench speculative` end to end on the tiny shape and short replies: records
for r(n), the draft's cost and every text x drafter x k (each speculative reply checked against
plain decoding inside the bench), a speedup against plain from the same run, and `bench report`
renders them."""
import json

import pytest

from ryzjupyter.bench.__main__ import main
from ryzjupyter.bench import report


def test_bench_speculative_tiny(tmp_path, capsys):
    out = tmp_path / "spec.json"
    assert main(["speculative", "--shape", "tiny", "--model-dir", str(tmp_path / "models"), "--repeat", "1",
                 "--positions", "1,2,5", "--context", "16", "--new-tokens", "12", "--ks", "auto,3",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "r(4) =" in text and "-> 2B-4T predicted" in text
    d = json.loads(out.read_text())
    assert d["bench"] == "speculative"
    kinds = [r["kind"] for r in d["records"]]
    assert kinds.count("spec_verify") == 3 and kinds.count("spec_draft_cost") == 1
    ver = [r for r in d["records"] if r["kind"] == "spec_verify"]
    if d["native"]["isa"] != "scalar":       # the floor of r: per phase, a step's or n tokens' multiply-adds at the peak
        for r in ver:
            peak = r["int8_peak_gops"] * 1e9
            cl, ch = 2 * r["positions"] * r["layer_macs"] / peak, 2 * r["positions"] * r["head_macs"] / peak
            assert r["compute_floor_s"] == pytest.approx(cl + ch)
            assert r["ratio_floor"] == pytest.approx((max(r["step_layers_s"], cl) + max(r["step_head_s"], ch))
                                                     / (r["step_layers_s"] + r["step_head_s"]))
            assert r["ratio_floor"] >= 1
        assert "the floor here" in text
    rows = [r for r in d["records"] if r["kind"] == "spec_text"]
    assert {r["text"] for r in rows} == {"free", "grounded", "repetitive"}
    assert {(r["drafter"], r["k"]) for r in rows} >= {("plain", "auto"), ("lookup", 3), ("auto", "auto"),
                                                      ("demo-draft", 3), ("adjacency", "auto")}
    for r in rows:
        assert r["n_generated"] == 12
        if r["drafter"] == "plain":
            assert r["speedup"] == 1.0 and r["tokens_per_pass"] == 1.0
        else:
            assert "predicted_2b4t" in r and r["predicted_2b4t"] > 0
            assert r["target_passes"] == r["n_generated"] - r["accepted"]
    md = report.render([out])
    assert "Verify cost" in md and "2B-4T predicted" in md and "| grounded | lookup |" in md
    assert ("The floor of r" in md) == (d["native"]["isa"] != "scalar")
