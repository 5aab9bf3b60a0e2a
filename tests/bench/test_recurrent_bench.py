"""bench recurrent end to end on tiny shapes (--quick): decode/prefill records per format and
thread count with their roofline, int8's cost, and the report renders them."""
import json

from ryzjupyter.bench.__main__ import main
from ryzjupyter.bench.report import render


def test_bench_recurrent_quick_writes_records_the_report_renders(tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert main(["recurrent", "--quick", "--shapes", "mamba-130m,rwkv-169m", "--threads", "1",
                 "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["bench"] == "recurrent" and "not measured here" in d["vs_llamacpp"]
    dec = [r for r in d["records"] if r["phase"] == "decode"]
    assert {(r["shape"], r["weights"]) for r in dec} == {(s, w) for s in ("mamba-130m", "rwkv-169m")
                                                          for w in ("f32", "int8")}
    for r in dec:
        assert r["tok_s"] > 0 and r["bytes_per_token"] > 0 and 0 < r["roofline_fraction"]
        assert abs(r["roofline_tok_s"] - r["bandwidth_gbps"] * 1e9 / r["bytes_per_token"]) < 1e-6 * r["roofline_tok_s"]
    i8 = [r for r in dec if r["weights"] == "int8"]
    f32 = {r["shape"]: r for r in dec if r["weights"] == "f32"}
    assert all(r["bytes_per_token"] < f32[r["shape"]]["bytes_per_token"] for r in i8)
    cost = [r for r in d["records"] if r["phase"] == "int8_cost"]
    assert len(cost) == 2 and all(r["ppl_f32"] >= 1 and r["kl_mean"] > -1e-6 for r in cost)
    text = render([out])
    assert "of roofline" in text and "not measured here" in text and "int8" in text


def test_bench_recurrent_measures_isa_levels_side_by_side(tmp_path):
    """--isa: every decode and prefill figure once per level, from runs that alternate them; the
    report shows an ISA column; a level the CPU lacks is refused; the level is restored."""
    import pytest

    from ryzjupyter import _native
    levels = _native.info()["supported_isas"][:2]        # scalar and the next one this CPU has
    before = _native.info()["isa"]
    out = tmp_path / "rec.json"
    assert main(["recurrent", "--quick", "--shapes", "mamba-130m", "--weights", "f32", "--threads", "1",
                 "--isa", ",".join(levels), "--json", str(out)]) == 0
    assert _native.info()["isa"] == before
    d = json.loads(out.read_text())
    assert d["isas"] == levels
    for phase in ("decode", "prefill"):
        assert sorted(r["isa"] for r in d["records"] if r["phase"] == phase) == sorted(levels)
    text = render([out])
    assert "| ISA |" in text and "side by side" in text and all(f"| {lv} |" in text for lv in levels)
    with pytest.raises(SystemExit, match="not supported"):
        main(["recurrent", "--quick", "--isa", "no-such-level"])
