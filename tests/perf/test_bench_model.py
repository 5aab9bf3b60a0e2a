"""`python -m ryzjupyter.bench model`: roofline maths, records, GGUF layout (small shapes, fast)."""
import importlib.util
import json
import os
import statistics

import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.bench import llamacpp, rss
from ryzjupyter.bench import report as bench_report
from ryzjupyter.bench import model as bm
from ryzjupyter.bench.__main__ import main

TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1024)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return bm.random_model_folder(TINY, tmp_path_factory.mktemp("bench"))


def test_decode_bytes_is_weights_head_and_kv(tiny_folder):
    m = bm.load_model(tiny_folder, "int8")
    D, I, L, V = 256, 512, 2, 1024
    hd, kvd = 64, 2 * 64
    rb = _native.i2_row_bytes
    lin = L * (D * rb(D) + 2 * kvd * rb(D) + D * rb(D) + 2 * I * rb(D) + D * rb(I))
    b = bm.decode_bytes(m, kv_rows=10)
    assert b["linear"] == lin == L * (D * D + 2 * kvd * D + D * D + 3 * I * D) // 4   # 2 bits per weight
    assert b["lm_head"] == V * D + 4 * V                     # int8 rows + one f32 scale per row
    assert b["kv_per_token"] == 2 * L * 2 * hd * 4           # K and V, float32, every layer
    assert b["kv"] == 10 * b["kv_per_token"]
    assert b["total"] == b["linear"] + b["norms"] + b["lm_head"] + b["embed_row"] + b["kv"]
    assert bm.ternary_params(m) == L * (2 * D * D + 2 * kvd * D + 3 * I * D)
    m32 = bm.load_model(tiny_folder, "f32")
    assert bm.decode_bytes(m32, 0)["lm_head"] == 4 * V * D


def test_python_overhead_restores_the_kernels(tiny_folder):
    import ryzjupyter.families.bitnet as B
    import ryzjupyter.engine.ternary as T
    m = bm.load_model(tiny_folder, "int8")
    before = (B.K, T._native)
    s, runs = bm.python_overhead(m, n=2, repeat=2)
    assert s > 0 and len(runs) == 2
    assert (B.K, T._native) == before
    c = m.new_cache()
    assert np.isfinite(m.forward([1, 2], c)).all()


def test_quick_run_writes_records(tmp_path, tiny_folder, capsys):
    out = tmp_path / "r.json"
    rc = main(["model", "--quick", "--threads", "1", "--model-dir", str(tiny_folder.parent), "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    recs = doc["records"]
    dec = [r for r in recs if r["phase"] == "decode"]
    pre = [r for r in recs if r["phase"] == "prefill"]
    assert {r["path"] for r in dec} == {"python", "fused"}
    assert {r["context"] for r in dec} == {0, 64}
    for r in dec + pre:
        for key in ("threads", "phase", "n_tokens", "context", "tok_s", "roofline_fraction"):
            assert key in r
        assert r["threads"] == 1 and r["tok_s"] > 0
    for r in dec:   # roofline = bandwidth / bytes per token
        assert r["roofline_fraction"] == pytest.approx(r["tok_s"] * r["bytes_per_token"] / (r["bandwidth_gbps"] * 1e9))
        # each run against the probe read right after it (as long as the run)
        per_run = [tok_s * r["bytes_per_token"] / (b * 1e9) for tok_s, b in zip(r["runs_tok_s"], r["bandwidth_runs"])]
        assert len(per_run) == len(r["runs_tok_s"]) >= 1
        assert r["roofline_fraction_paired"] == pytest.approx(statistics.median(per_run))
    for r in pre:   # prefill ops against the int8 peak read right after each run (as long as it)
        ops = r["int8_gops"] * r["ttft_s"]
        assert len(r["peak_runs"]) == len(r["runs_tok_s"]) >= 1 and min(r["peak_runs"]) > 0
        assert r["peak_gops"] == pytest.approx(statistics.median(r["peak_runs"]))
        assert r["roofline_fraction"] == pytest.approx(r["int8_gops"] / r["peak_gops"])
        per_run = [ops * tok_s / r["n_tokens"] / pk for tok_s, pk in zip(r["runs_tok_s"], r["peak_runs"])]
        assert r["roofline_fraction_paired"] == pytest.approx(statistics.median(per_run))
        assert r["roofline_fraction_start_peak"] == pytest.approx(r["int8_gops"] / r["peak_gops_start"])
    assert any(r["phase"] == "python_overhead" for r in recs)
    assert any(r["phase"] == "memory" and r.get("peak_rss_bytes") for r in recs)
    assert "decode ctx 0 fused" in capsys.readouterr().out
    assert doc["bench"] == "model" and doc["model"]["kv_cache"] == "f32"
    assert main(["report", str(out)]) == 0
    tables = capsys.readouterr().out
    assert "| 1 | 0 | fused | **" in tables and "Prefill" in tables and "Python ms (share)" in tables
    # the rows are the records' figures
    dec0 = next(r for r in dec if r["path"] == "fused" and r["context"] == 0)
    row = next(l for l in tables.splitlines() if l.startswith("| 1 | 0 | fused |"))
    assert f"**{dec0['tok_s']:.1f}**" in row and f"{dec0['roofline_tok_s']:.1f}" in row
    assert row.split("|")[7].strip() == f"{dec0['roofline_fraction']:.0%}".replace("%", " %")
    pre_row = next(l for l in tables.splitlines() if l.startswith(f"| 1 | {pre[0]['n_tokens']} |"))
    if doc["native"]["isa"] == "scalar":
        assert pre_row.split("|")[6].strip() == "-"
    else:
        assert pre_row.split("|")[6].strip() == f"{pre[0]['roofline_fraction']:.0%}".replace("%", " %")
    assert f"`{doc['machine']['command']}`" in tables
    # the attention share of every decode and prefill figure: the attention kernel alone, all layers
    for r in dec + pre:
        assert r["attention"] == "tiled" and 0 < r["attention_s"] and r["attention_share"] > 0
    assert pre_row.split("|")[7].strip() == f"{pre[0]['attention_share']:.0%}".replace("%", " %")


def test_attention_variants_side_by_side(tmp_path, tiny_folder):
    """--attention tiled,units times both variants in the same run: one record per variant and
    point, and the report gets an attention column."""
    out = tmp_path / "v.json"
    assert main(["model", "--quick", "--threads", "1", "--paths", "fused", "--no-overhead", "--attention",
                 "tiled,units", "--model-dir", str(tiny_folder.parent), "--json", str(out)]) == 0
    recs = json.loads(out.read_text())["records"]
    for phase in ("decode", "prefill", "attention"):
        assert sorted(r["attention"] for r in recs if r["phase"] == phase and r["context"] == 0) == ["tiled", "units"]
    assert _native.set_attention_variant("tiled") == "tiled"   # the run put the default back
    tables = bench_report.model_tables(json.loads(out.read_text()))
    assert "| threads | context | path | attention |" in tables and "| 1 | 0 | fused | units |" in tables
    with pytest.raises(SystemExit, match="tiled and/or units"):
        main(["model", "--quick", "--attention", "flash", "--model-dir", str(tiny_folder.parent)])


def test_quick_run_at_the_scalar_level(tmp_path, tiny_folder):
    # no SIMD int8 peak at scalar: the run completes, prefill has no fraction of a peak
    from ryzjupyter.engine.native import using_isa
    out = tmp_path / "s.json"
    with using_isa("scalar"):
        rc = main(["model", "--quick", "--threads", "1", "--no-overhead", "--paths", "python",
                   "--model-dir", str(tiny_folder.parent), "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["native"]["isa"] == "scalar" and doc["machine"]["probe_loops"]["int8"] is None
    recs = doc["records"]
    assert not [r for r in recs if r["phase"] == "int8_peak"]
    pre = [r for r in recs if r["phase"] == "prefill"]
    assert pre and all(r["tok_s"] > 0 and r["roofline_fraction"] is None and r["peak_runs"] == [] for r in pre)
    assert all(r["roofline_fraction"] > 0 for r in recs if r["phase"] == "decode")


def test_rss():
    assert rss.current() > 0 and rss.peak() >= rss.current() * 0.5
    rss.reset_peak()
    assert rss.peak() > 0


def test_tq2_0_blocks_layout():
    rng = np.random.default_rng(0)
    t = rng.integers(-1, 2, (3, 512), dtype=np.int8)
    b = llamacpp.tq2_0_blocks(t, 0.25)
    assert b.shape == (3, 2 * 66)
    np.testing.assert_array_equal(llamacpp.tq2_0_dequant(b, 512), t.astype(np.float32) * 0.25)
    # ggml's block_tq2_0: qs[j*32 + m] bits 2n hold element j*128 + n*32 + m of the block
    assert (b[0, 5] >> 2) & 3 == t[0, 32 + 5] + 1
    assert (b[0, 32 + 7] >> 6) & 3 == t[0, 128 + 96 + 7] + 1
    assert b[0, 64:66].view(np.float16)[0] == np.float16(0.25)


def test_tq2_0_matches_gguf():
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(1)
    t = rng.integers(-1, 2, (4, 256), dtype=np.int8)
    ours = llamacpp.tq2_0_blocks(t, 0.5)
    theirs = gguf.quants.quantize(t.astype(np.float32) * 0.5, gguf.GGMLQuantizationType.TQ2_0)
    np.testing.assert_array_equal(ours, theirs)
    back = gguf.quants.dequantize(ours, gguf.GGMLQuantizationType.TQ2_0)
    np.testing.assert_array_equal(back.reshape(4, 256), t.astype(np.float32) * 0.5)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None and not os.environ.get("RYZ_LLAMACPP_PYTHON"),
                    reason="llama-cpp-python not installed (or set RYZ_LLAMACPP_PYTHON to a python that has it)")
def test_vs_llamacpp_quick(tmp_path, tiny_folder):
    pytest.importorskip("gguf")
    out = tmp_path / "r.json"
    main(["model", "--quick", "--threads", "1", "--model-dir", str(tiny_folder.parent), "--json", str(out),
          "--vs", "llamacpp", "--gguf", str(tmp_path / "m.gguf"), "--no-overhead"])
    recs = json.loads(out.read_text())["records"]
    assert any(r["engine"] == "llama.cpp" and r["phase"] == "prefill" and r["tok_s"] > 0 for r in recs)


def test_quick_run_int8_kv_cache(tmp_path, tiny_folder):
    out = tmp_path / "r.json"
    assert main(["model", "--quick", "--threads", "1", "--kv-cache", "int8", "--model-dir", str(tiny_folder.parent),
                 "--json", str(out)]) == 0
    recs = json.loads(out.read_text())["records"]
    dec = [r for r in recs if r["phase"] == "decode"]
    assert {r["path"] for r in dec} == {"python", "fused"}
    assert all(r["bytes_per_token"] > 0 for r in dec)


def test_quick_run_kv_formats_side_by_side(tmp_path, tiny_folder):
    """--kv-cache f32,f16,bf16: every format timed in the same run (decode, attention, prefill), its
    records labelled, the bytes a token following the format, and the report's side-by-side table."""
    out = tmp_path / "r.json"
    assert main(["model", "--quick", "--threads", "1", "--kv-cache", "f32,f16,bf16", "--paths", "fused",
                 "--no-overhead", "--model-dir", str(tiny_folder.parent), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    recs = doc["records"]
    for phase, n in (("decode", 6), ("attention", 6), ("prefill", 3)):     # contexts 0 and 64, prefill 16
        got = [r["kv_cache"] for r in recs if r["phase"] == phase]
        assert len(got) == n and set(got) == {"f32", "f16", "bf16"}, phase
    dec = {r["kv_cache"]: r for r in recs if r["phase"] == "decode" and r["context"] == 64}
    kv32 = dec["f32"]["bytes_per_token"] - dec["f16"]["bytes_per_token"]
    assert kv32 > 0 and dec["f16"]["bytes_per_token"] == dec["bf16"]["bytes_per_token"]
    assert doc["model"]["kv_cache"] == "f32,f16,bf16"
    from ryzjupyter.bench.report import model_tables
    text = model_tables(doc)
    assert "KV cache formats side by side" in text and "| f32 tok/s | f16 tok/s | bf16 tok/s |" in text
    with pytest.raises(SystemExit):
        main(["model", "--quick", "--kv-cache", "f32,fp8"])


def test_quick_run_t5_layout(tmp_path, tiny_folder, capsys):
    out = tmp_path / "r.json"
    assert main(["model", "--quick", "--threads", "1", "--ternary-layout", "t5", "--model-dir",
                 str(tiny_folder.parent), "--json", str(out)]) == 0
    assert "ternary layout: t5 (14 linears repacked" in capsys.readouterr().out
    recs = json.loads(out.read_text())["records"]
    assert {r["path"] for r in recs if r["phase"] == "decode"} == {"python", "fused"}


def test_repack_linears_keeps_the_trits(tiny_folder):
    m = bm.load_model(tiny_folder, "int8")
    before = [getattr(lw, n).trits() for lw in m.weights.layers for n in ("wq", "w_down")]
    assert m.repack_linears("t5") == 14
    after = [getattr(lw, n) for lw in m.weights.layers for n in ("wq", "w_down")]
    assert all(w.layout == "t5" for w in after)
    for t, w in zip(before, after):
        np.testing.assert_array_equal(w.trits(), t)
