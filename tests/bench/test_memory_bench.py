"""`bench memory` end to end on a small labelled set written here (two reST pages in the layout of
Debian's python3.11-doc), the perplexity part on 30 held-back lines of the demo model, a 5000-unit
latency run, and its report."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("qdrant_client", reason="qdrant-client is in the memory extra (ci pulls it)")

PAGES = {
    "argparse": """:mod:`argparse` --- Parser for command-line options
=====================================================

.. module:: argparse

Introduction
------------

The argparse module makes it easy to write user-friendly command-line interfaces.

ArgumentParser objects
----------------------

.. class:: ArgumentParser(prog=None, usage=None, description=None)

   Create a new ArgumentParser object. All parameters should be passed as keyword arguments.

The add_argument() method
-------------------------

.. method:: ArgumentParser.add_argument(name or flags..., [action], [nargs])

   Define how a single command-line argument should be parsed.
""",
    "base64": """:mod:`base64` --- Base16, Base32, Base64, Base85 Data Encodings
===============================================================

Encoding
--------

.. function:: b64encode(s, altchars=None)

   Encode the bytes-like object s using Base64 and return the encoded bytes.

Decoding
--------

.. function:: b64decode(s, altchars=None, validate=False)

   Decode the Base64 encoded bytes-like object or ASCII string s and return the decoded bytes.
""",
}


def test_bench_memory_record_and_report(tmp_path):
    docs = tmp_path / "library"
    docs.mkdir()
    for name, text in PAGES.items():
        (docs / f"{name}.rst.txt").write_text(text)
    out = tmp_path / "memory.json"
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "memory", "--docs", str(docs), "--modules", "2",
                        "--questions", "10", "--sizes", "5000", "--ppl-verses", "30", "--ppl-every", "10",
                        "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    kinds = {x["kind"]: x for x in d["records"]}
    ret = kinds["memory_retrieval"]
    assert ret["questions"] == 4 and ret["modules"] == 2        # ArgumentParser, add_argument, b64encode, b64decode
    assert 0 <= ret["precision_at_5"] <= ret["hit_at_5"] <= 1 and ret["hit_at_5"] >= 0.75
    assert kinds["memory_recall"]["recall_at_5"] >= 0.8
    ppl = kinds["memory_ppl"]
    assert ppl["questions"] >= 2 and ppl["ppl_off"] > 1 and ppl["ppl_on"] > 1 and ppl["answer_tokens"] > 0
    lat = kinds["memory_latency"]
    assert lat["units"] == 5000 and lat["p50_ms"] <= lat["p99_ms"] and lat["qdrant_local_p50_ms"] > 0
    # search(text) end to end holds the question's embedding and the scan
    assert lat["search_p50_ms"] > lat["p50_ms"] and lat["search_p50_ms"] >= 0.5 * lat["encode_p50_ms"] > 0
    try:
        import qdrant_edge  # noqa: F401
        assert 0 <= lat["edge_indexed"] <= 5000 and lat["bank_vs_edge_exact_at_5"] == 1.0  # both exact: same top 5
        assert 0 <= lat["edge_hnsw_recall_at_5"] <= 1 and lat["edge_exact_p50_ms"] > 0
    except ImportError:
        assert "edge_exact_p50_ms" not in lat
    uses = kinds["memory_use_count"]
    assert uses["units"] > 0 and uses["p50_on_ms"] > 0 and uses["p50_off_ms"] > 0
    rep = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "report", str(out)], capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "hit rate at 5" in rep.stdout and "| 5,000 |" in rep.stdout and "recycling off" in rep.stdout
    assert "bank search(text)" in rep.stdout and "Counting uses" in rep.stdout


def test_bench_memory_listing_and_use_counting_records(tmp_path):
    """--listing N and --use-counting alone: the newest units side by side with reading every unit
    (the listing's ids checked inside), the counts' write batched against one call per unit."""
    out = tmp_path / "listing.json"
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "memory", "--modules", "0", "--ppl-verses", "0",
                        "--sizes", "--listing", "3000", "--use-counting", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {x["kind"]: x for x in json.loads(out.read_text())["records"]}
    lst = kinds["memory_listing"]
    assert lst["units"] == 3000 and lst["limit"] == 20 and 0 < lst["newest_p50_ms"] and lst["speedup"] > 1
    uses = kinds["memory_use_count"]
    assert uses["write_batch_p50_ms"] > 0 and uses["write_loop_p50_ms"] > 0
    rep = subprocess.run([sys.executable, "-m", "ryzjupyter.bench", "report", str(out)], capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "on a bank of 3,000 units" in rep.stdout and "one `batch_update_points` call" in rep.stdout
