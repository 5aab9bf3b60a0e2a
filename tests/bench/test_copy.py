"""`bench copy`: the copy fraction and the second/first perplexity of a repeated passage, checked
against plain recomputations from the engine's logits (greedy argmax one token at a time, and the
windowed NLL that `bench ppl` uses)."""
import json

import numpy as np
import pytest

import ryzjupyter
from ryzjupyter.bench import copy as copybench
from ryzjupyter.bench import report
from ryzjupyter.decoding.perplexity import text_ids, window_nll


@pytest.fixture(scope="module")
def demo():
    return ryzjupyter.load("demo")


def test_passages_spread_over_the_text():
    ids = list(range(1000))
    ps = copybench.passages(ids, 5, 100)
    assert [p[0] for p in ps] == [0, 225, 450, 675, 900] and all(len(p) == 100 for p in ps)
    with pytest.raises(ValueError, match="fewer than one passage"):
        copybench.passages(ids[:50], 5, 100)


def test_copy_figures_match_a_recomputation(demo):
    text = (demo.path / "validation.txt").read_text()
    passage = copybench.passages(text_ids(demo, text), 3, 100)[1]
    prefix, n_next = 8, 24
    r = copybench.copy_passage(demo, passage, prefix, n_next)
    ctx = passage + passage[:prefix]                     # greedy, one full forward a token
    for _ in range(n_next):
        ctx.append(int(np.argmax(demo.logits(ctx)[-1])))
    want = passage[prefix:prefix + n_next]
    assert r["copied"] == pytest.approx(sum(a == b for a, b in zip(ctx[-n_next:], want)) / n_next)
    # the first occurrence's NLL is the passage's own window NLL; the second is lower with it in context
    assert r["nll_first"] == pytest.approx(window_nll(demo, passage) / (len(passage) - 1), rel=1e-5)
    assert r["nll_second"] < r["nll_first"]


def test_measure_fits_the_context_and_renders(demo, tmp_path):
    text = (demo.path / "validation.txt").read_text()
    m = copybench.measure(demo, text, n_passages=2, passage_tokens=500, prefix=16, n_next=64)
    assert m["passage_tokens"] == demo.max_context // 2 and m["passages"] == 2 and m["next"] == 64
    assert 0.0 <= m["copied_mean"] <= 1.0 and m["second_over_first"] == pytest.approx(m["ppl_second"] / m["ppl_first"])
    record = {"bench": "copy", "machine": {"cpu": "test CPU", "logical_cpus": 2, "physical_cores": 1, "isa": "avx2",
                                           "supported_isas": ["scalar", "avx2"], "date": "2026-12-07"},
              "records": [{**m, "model": "demo", "file": "validation.txt"}]}
    p = tmp_path / "copy.json"
    p.write_text(json.dumps(record))
    assert f"**{m['copied_mean']:.1%}**".replace("%", " %") in report.render([p])
