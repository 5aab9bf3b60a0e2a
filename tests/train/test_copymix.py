"""The trainer's in-context copy mix (ryzjupyter/train/copymix.py, train.py --copy-frac): the fraction of copy rows,
each copy row's two occurrences at the offsets it states, disjointness from the validation text and from the
passages `bench copy` evaluates on, determinism under a seed, the Debian sources' readers, and a tiny end-to-end run
at context 1024 whose exported model the engine reads with the trainer's perplexity.

The texts: the shipped demo tokenizer and validation.txt (the held-out King James chapters), and this repository's
own docs/*.md as a stand-in training text (no Debian package needed)."""
from __future__ import annotations

import glob
import json
from pathlib import Path
import math
import os
import random

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer  # noqa: E402

from ryzjupyter.bench.copy import passages as bench_passages  # noqa: E402
from ryzjupyter.train import copymix, corpus  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DEMO = os.path.join(ROOT, "ryzjupyter", "models", "demo")
N = copymix.EXCLUDE_N


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(os.path.join(DEMO, "tokenizer.json"))


@pytest.fixture(scope="module")
def valid_text():
    return open(os.path.join(DEMO, "validation.txt"), encoding="utf-8").read()


@pytest.fixture(scope="module")
def docs_chapters():
    """The repository's docs as documents (paragraphs, chapters' format)."""
    text = "\n\n".join(open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))))
    docs = corpus.documents(corpus.paragraphs(text))
    assert len(docs) > 50
    return docs


@pytest.fixture(scope="module")
def world(tok, valid_text, docs_chapters):
    """Sources: the docs, and a 'planted' source that holds the validation text itself between docs paragraphs
    (a source that quotes the held-out text); the plain stream holds it too."""
    from ryzjupyter.train.train import build_stream

    vchapters = corpus.text_to_chapters(valid_text)
    planted = [d for pair in zip(docs_chapters, vchapters) for d in pair]
    stream = build_stream(tok, docs_chapters[:60] + vchapters[:5], random.Random(0), 1)
    sources = [("docs", copymix.tokenize_documents(tok, docs_chapters)),
               ("planted", copymix.tokenize_documents(tok, planted))]
    vids = tok.encode(valid_text, add_special_tokens=False).ids
    return {"stream": stream, "sources": sources, "vids": vids}


def runs(ids, n=N):
    return {tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)}


def make_mix(world, width=1025, excluded=True, **kw):
    ex = copymix.Exclusion([world["vids"]] if excluded else [])
    return copymix.CopySequences(world["sources"], world["stream"], width, ex, **kw)


def test_copy_rows_are_the_requested_fraction_spread_evenly():
    for frac in (0.0, 0.1, 0.25, 1 / 3, 0.3, 0.5, 1.0):
        flags = [copymix.is_copy_row(k, frac) for k in range(1000)]
        for n in (1, 7, 16, 100, 999, 1000):
            assert sum(flags[:n]) == math.floor(n * frac), (frac, n)


def test_batch_rows_fraction_and_plain_rows_unchanged(world):
    """Copy rows at the requested fraction; with --copy-frac 0 the rows are exactly the trainer's windows before
    the mix (rng.randrange(len(stream) - ctx - 1), ctx + 1 tokens), so old runs reproduce."""
    stream, W, B = world["stream"], 257, 8
    mix = make_mix(world, W)
    rng, crng = random.Random(5), random.Random(6)
    n_copy = 0
    for step in range(25):
        rows, infos = copymix.batch_rows(stream, W, B, step, rng, mix, 0.3, crng)
        assert rows.shape == (B, W) and rows.dtype == np.int64
        n_copy += sum(i is not None for i in infos)
    assert n_copy == math.floor(25 * B * 0.3) == 60
    rng, old = random.Random(9), random.Random(9)
    for step in range(5):
        rows, infos = copymix.batch_rows(stream, W, B, step, rng, mix, 0.0, crng)
        starts = [old.randrange(len(stream) - (W - 1) - 1) for _ in range(B)]
        assert infos == [None] * B
        assert np.array_equal(rows, np.stack([stream[s:s + W] for s in starts]))


def test_copy_sequence_holds_its_passage_twice_at_the_stated_offsets(world):
    mix = make_mix(world, 1025, min_passage=16)
    src = dict((name, ids) for name, ids, _ in mix.sources)
    rng = random.Random(1)
    seen_offset0 = seen_offset = seen_gap0 = seen_gap = 0
    names = set()
    for _ in range(300):
        row, info = mix.sequence(rng)
        assert row.shape == (1025,) and row.dtype == np.int64
        P, L = info.passage, info.length
        assert 16 <= P <= 512 and 16 <= L <= P - info.offset
        assert info.second == info.first + P + info.gap and info.second + L <= 1025
        assert np.array_equal(row[info.first:info.first + P], src[info.source][info.source_start:info.source_start + P])
        assert np.array_equal(row[info.second:info.second + L],
                              row[info.first + info.offset:info.first + info.offset + L])
        seen_offset0 += info.offset == 0
        seen_offset += info.offset > 0
        seen_gap0 += info.gap == 0
        seen_gap += info.gap > 0
        names.add(info.source)
    assert min(seen_offset0, seen_offset, seen_gap0, seen_gap) > 30 and names == {"docs", "planted"}


def test_copy_sequences_never_hold_validation_text_or_bench_copy_passages(world):
    """The validation text is in the planted source and in the plain stream: without the exclusion the mix draws
    it; with it (the trainer always excludes --valid) no row shares a 16-token run with the validation text, so
    neither with any passage `bench copy` takes from it (bench.copy.passages, the passage lengths of a 256- and a
    1024-token model)."""
    vids = world["vids"]
    vruns = runs(vids)
    bench_runs = set()
    for P in (128, 192):
        for p in bench_passages(vids, 16, P):
            bench_runs |= runs(p)
    assert bench_runs <= vruns and len(bench_runs) > 2000

    hits = 0
    rng = random.Random(3)
    free = make_mix(world, 1025, excluded=False)
    for _ in range(60):
        row, _ = free.sequence(rng)
        hits += bool(runs(row.tolist()) & vruns)
    assert hits > 5, "the planted source should make an unfiltered mix draw validation text"

    mix = make_mix(world, 1025)
    rng = random.Random(3)
    for _ in range(200):
        row, _ = mix.sequence(rng)
        r = runs(row.tolist())
        assert not (r & vruns) and not (r & bench_runs)
    assert mix.rejected > 0


def test_copy_mix_is_deterministic_under_a_seed(world):
    def draw(seed):
        mix = make_mix(world, 513)
        rng, crng = random.Random(seed), random.Random(seed + 1)
        out = [copymix.batch_rows(world["stream"], 513, 4, s, rng, mix, 0.5, crng) for s in range(6)]
        return np.stack([r for r, _ in out]), [i for _, infos in out for i in infos]

    a, ia = draw(7)
    b, ib = draw(7)
    c, _ = draw(8)
    assert np.array_equal(a, b) and ia == ib
    assert not np.array_equal(a, c)


def test_bad_passage_lengths_are_clear_errors(world):
    with pytest.raises(ValueError, match="passage lengths"):
        make_mix(world, 257, max_passage=200)
    with pytest.raises(ValueError, match="passage lengths"):
        make_mix(world, 257, min_passage=0)


def test_info_cleanup_and_documents():
    raw = ("\x1f\nFile: python3.11.info,  Node: Intro,  Next: More,  Up: Top\n\n"
           "* Menu entry: Node<2>.\n* Other::\n\n"
           "The *note os.popen(): 724. function runs a command and returns a pipe\n"
           "   to it, see the notes below for details.\n\n   * An indented bullet with enough words to keep it.\n\n"
           "   (1) https://bugs.python.org/issue?x=1\n\nShort line.\n")
    paras = corpus.paragraphs(corpus.clean_source("pydoc", raw))
    assert paras == ["The os.popen() function runs a command and returns a pipe to it, see the notes below for "
                     "details.", "* An indented bullet with enough words to keep it."]
    docs = corpus.documents([f"paragraph {i} " + "word " * 100 for i in range(100)], max_chars=2000)
    assert all(sum(len(p) + 1 for p in d) <= 2000 + 600 for d in docs) and sum(map(len, docs)) == 100
    train, valid = corpus.split_documents(list(range(100)))
    assert valid == [20, 60] and len(train) == 98
    assert corpus.text_to_chapters(corpus.documents_to_text([["a b", "c"], ["d"]])) == [["a b", "c"], ["d"]]
    assert copymix.source_name("/tmp/kjv/copy-pydoc-train.txt") == "pydoc"


@pytest.mark.parametrize("name", sorted(corpus.SOURCES))
def test_debian_sources_read(name):
    """Each copy source from its Debian package (skipped where the package is not installed)."""
    if not os.path.isfile(corpus.SOURCES[name]["path"]):
        pytest.skip(f"apt-get install {corpus.SOURCES[name]['package']}")
    docs = corpus.source_documents(name)
    train, valid = corpus.split_documents(docs)
    assert len(docs) > 100 and len(valid) >= 3
    text = corpus.documents_to_text(train)
    for markup in ("\x1f", "\x7f", "*note", "Node:", "Tag Table"):
        assert markup not in text, markup


def test_end_to_end_ctx_1024_engine_equals_trainer(tmp_path, valid_text, docs_chapters):
    """A few steps of a tiny model at context 1024 with the copy mix; the export loads in the engine with
    max_context 1024 and the engine's NLL of every validation window equals the trainer's."""
    pytest.importorskip("torch")
    import ryzjupyter
    from ryzjupyter.bench import ppl
    from ryzjupyter.train import train

    (tmp_path / "train.txt").write_text(corpus.documents_to_text(docs_chapters), encoding="utf-8")
    (tmp_path / "copy-docs-train.txt").write_text(corpus.documents_to_text(docs_chapters[::2]), encoding="utf-8")
    valid = "\n\n".join(valid_text.split("\n\n")[:4]) + "\n"
    (tmp_path / "valid.txt").write_text(valid, encoding="utf-8")
    out = tmp_path / "model"
    train.main(["--corpus", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                "--tokenizer", os.path.join(DEMO, "tokenizer.json"), "--out", str(out), "--ctx", "1024",
                "--hidden", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--batch", "2", "--steps", "3",
                "--eval-every", "2", "--eval-windows", "2", "--copy-frac", "0.5",
                "--copy-sources", "kjv", str(tmp_path / "copy-docs-train.txt")])
    r = json.loads((out / "validation_ppl.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 1024 == r["n_ctx"]
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 1024
    cm = r["copy_mix"]
    assert cm["frac"] == 0.5 and cm["rows_total"] == 6 and cm["rows"] == 3
    assert [s["name"] for s in cm["sources"]] == ["kjv", "docs"] and cm["max_passage"] == 512
    assert 0 < r["copy_second_over_first"] < 2 and r["val_ppl_256"] > 1
    assert r["val_windows"] >= 2 and r["val_tokens"] > 1024

    # the card of a copy-mix run: the mix stated, and its training command re-parses to the run's own settings
    from ryzjupyter.train import card
    card.main(["--main", str(out), "--draft", str(out)])
    text = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "In-context copy mix: 50% of the rows (3 of 6)" in text and "They do not read their context" not in text
    cmd = text.split("Training command:\n\n```\n")[1].split("\n```")[0].replace("\\\n", " ").split()
    assert cmd[:3] == ["python", "-m", "ryzjupyter.train.train"]
    again = train.build_parser().parse_args(cmd[3:])
    for k in ("ctx", "hidden", "layers", "heads", "kv_heads", "batch", "steps", "seed", "copy_frac"):
        assert getattr(again, k) == r["args"][k], k
    assert again.copy_sources == ["kjv", "/tmp/kjv/copy-docs-train.txt"]

    model = ryzjupyter.load(str(out))
    assert model.max_context == 1024
    ids = model.tokenizer.encode(valid, add_special_tokens=False)
    wins = ppl.windows(ids, 1024)
    assert len(ids) == r["val_tokens"] and len(wins) == r["val_windows"] and len(wins[0]) == 1024
    for i, w in enumerate(wins):
        assert ppl.window_nll(model, w) == pytest.approx(r["val_window_nll"][i], rel=1e-4), i


def test_retrain_plan_parses_and_never_writes_the_shipped_models(capsys):
    """The one-command retrain: every training command parses with the trainer's own parser, at context 1024 with
    the copy mix from the three Debian sources and the KJV chapters, the sources' held-out part excluded."""
    from ryzjupyter.train import retrain, train

    cmds = retrain.commands("/w", "/o")
    assert list(cmds) == ["corpus", "tokenizer", "demo", "demo-draft", "card"]
    for name in ("demo", "demo-draft"):
        a = train.build_parser().parse_args(cmds[name][3:])
        assert a.ctx == 1024 and a.copy_frac == 0.3 and a.out == f"/o/{name}" and a.steps == retrain.steps(name)
        assert a.copy_sources == ["kjv"] + [f"/w/copy-{s}-train.txt" for s in ("pydoc", "jargon", "devil")]
        assert a.copy_exclude == ["/w/copy-valid.txt"] and a.tokenizer == "/w/tokenizer.json"
    assert train.build_parser().parse_args(cmds["demo"][3:]).hidden == 256
    assert train.build_parser().parse_args(cmds["demo-draft"][3:]).hidden == 128
    assert retrain.main(["--work", "/w", "--out-dir", "/o", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("ryzjupyter.train.train") == 2
    with pytest.raises(SystemExit, match="shipped"):
        retrain.main(["--out-dir", os.path.join(ROOT, "ryzjupyter", "models"), "--dry-run"])


def test_shipped_model_card_is_what_card_py_writes(tmp_path):
    """MODEL_CARD.md is card.py's rendering of the shipped records (so the retrain section, with its sources,
    licences and expected time, is in the shipped card and stays in step with retrain.py)."""
    import shutil

    from ryzjupyter.train import card, corpus, retrain

    for name in ("demo", "demo-draft"):
        (tmp_path / name).mkdir()
        for f in ("validation_ppl.json", "model.safetensors"):
            shutil.copy(os.path.join(ROOT, "ryzjupyter", "models", name, f), tmp_path / name / f)
    card.main(["--main", str(tmp_path / "demo"), "--draft", str(tmp_path / "demo-draft")])
    for name in ("demo", "demo-draft"):
        want = open(os.path.join(ROOT, "ryzjupyter", "models", name, "MODEL_CARD.md"), encoding="utf-8").read()
        assert (tmp_path / name / "MODEL_CARD.md").read_text(encoding="utf-8") == want, name
    text = (tmp_path / "demo" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "python -m ryzjupyter.train.retrain --work /tmp/kjv --out-dir /tmp/retrained --parallel" in text
    for s in corpus.SOURCES.values():
        assert s["package"] in text and s["licence"] in text
    runs = json.load(open(retrain.THROUGHPUT))
    assert [r["model"] for r in runs] == ["demo", "demo-draft"]
    for r in runs:
        hours = retrain.steps(r["model"]) * r["cpu_s_per_step"] / 3600
        assert f"| {hours:.1f} h |" in text


def test_init_continues_the_bundled_draft(tmp_path, valid_text, docs_chapters):
    """--init FOLDER: the shape and tokenizer come from the folder, --ctx extends the context, and the
    first evaluation (before any step changes much) is the bundled model's own perplexity region."""
    pytest.importorskip("torch")
    from ryzjupyter.train import train

    (tmp_path / "train.txt").write_text(corpus.documents_to_text(docs_chapters), encoding="utf-8")
    valid = "\n\n".join(valid_text.split("\n\n")[:4]) + "\n"
    (tmp_path / "valid.txt").write_text(valid, encoding="utf-8")
    out = tmp_path / "model"
    draft = os.path.join(ROOT, "ryzjupyter", "models", "demo-draft")
    train.main(["--corpus", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"), "--init", draft,
                "--out", str(out), "--ctx", "512", "--batch", "2", "--steps", "1", "--lr", "1e-6",
                "--eval-every", "0"])
    cfg, shipped = (json.loads((Path(d) / "config.json").read_text()) for d in (out, draft))
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size"):
        assert cfg[k] == shipped[k], k
    assert cfg["max_position_embeddings"] == 512
    assert (out / "tokenizer.json").read_text() == (Path(draft) / "tokenizer.json").read_text()
    r = json.loads((out / "validation_ppl.json").read_text())
    base = json.loads((Path(draft) / "validation_ppl.json").read_text())["val_ppl"]
    assert r["val_ppl_256"] < 1.2 * base     # one step at lr 1e-6 from the shipped weights: still that model
