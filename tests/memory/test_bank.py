"""RecycleBank on an embedded Qdrant store: persistence, crash safety, namespaces, TTL, merging of
near-duplicates, the size cap, one process at a time, and a clear error for every bad input."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("qdrant_client", reason="qdrant-client is in the memory extra (ci pulls it)")

from ryzjupyter.memory.bank import MARKER, BankBusyError, BankError, RecycleBank  # noqa: E402

DOCS = {
    "asyncio": "The asyncio event loop runs coroutines and callbacks. Tasks wrap coroutines so they run "
               "concurrently on the loop.",
    "pickle": "The pickle module serializes Python objects to bytes. Never unpickle data from an untrusted source.",
    "csv": "The csv module reads and writes comma-separated values. A csv.reader iterates over the rows of a file.",
    "bread": "Knead the dough for ten minutes, let it rise for an hour, then bake it at 220 degrees.",
}


@pytest.fixture
def bank(tmp_path):
    b = RecycleBank(tmp_path / "bank")
    yield b
    b.close()


def test_add_then_search_finds_the_right_unit(bank):
    ids = {name: bank.add(text, source="file", meta={"doc": name}) for name, text in DOCS.items()}
    assert all(ids.values()) and len(bank) == sum(len(v) for v in ids.values())
    hits = bank.search("how do I read rows from a comma separated file?", k=3)
    assert len(hits) == 3 and hits[0].meta == {"doc": "csv"} and hits[0].source == "file"
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert hits[0].id in ids["csv"] and "csv" in hits[0].text
    assert bank.search("serializing objects", k=1)[0].meta["doc"] == "pickle"
    assert len(bank.search("anything", k=50)) == len(bank)


def test_search_ranking_is_the_stores_own(bank):
    """The in-memory scan ranks exactly as Qdrant's own search over the same vectors."""
    for text in DOCS.values():
        bank.add(text)
    q = bank.encoder.encode(["event loop tasks"])[0]
    ours = bank.search_vector(q, k=5, count_use=False)
    theirs = bank.client.query_points(bank.collection, query=q.tolist(), limit=5).points
    assert [h.id for h in ours] == [str(p.id) for p in theirs]
    np.testing.assert_allclose([h.score for h in ours], [p.score for p in theirs], atol=1e-5)


def test_survives_a_restart_and_counts_uses(tmp_path):
    path = tmp_path / "bank"
    with RecycleBank(path) as b:
        ids = b.add(DOCS["pickle"], source="reply")
        b.search("pickle", k=1)
    assert (path / MARKER).is_file()
    with RecycleBank(path) as b:                    # a new kernel, the same folder
        assert {h.id for h in b.list()} == set(ids)
        hit = b.search("serialize objects with pickle", k=1)[0]
        assert hit.id in ids and hit.source == "reply" and hit.uses == 1


def test_a_killed_writer_loses_nothing_committed(tmp_path):
    """A kernel killed in the middle of add(): what add() had returned is there, the store opens."""
    path = tmp_path / "bank"
    script = textwrap.dedent(f"""
        import sys
        from ryzjupyter.memory.bank import RecycleBank
        b = RecycleBank({str(path)!r})
        ids = b.add({DOCS['csv']!r}, source="cell")
        print("COMMITTED", ",".join(ids), flush=True)
        while True:                                  # keep adding until killed
            b.add("Some other sentence about topic number " + str(len(ids)) + ". " * 3, source="cell")
            ids.append("x")
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("COMMITTED"), line
    committed = line.split()[1].split(",")
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    with RecycleBank(path) as b:
        stored = {h.id for h in b.list()}
        assert set(committed) <= stored
        assert b.search("comma separated values", k=1)[0].id in committed


def test_namespaces_are_separate(tmp_path):
    with RecycleBank(tmp_path / "b", namespace="alice") as a:
        a.add(DOCS["bread"])
    with RecycleBank(tmp_path / "b", namespace="bob") as b:
        assert len(b) == 0 and b.search("bread", k=3) == []
        b.add(DOCS["csv"])
        assert b.stats()["namespaces"] == 2
    with RecycleBank(tmp_path / "b", namespace="alice") as a:
        assert len(a) == 1 and "dough" in a.search("baking", k=1)[0].text


def test_near_duplicates_are_merged(bank):
    first = bank.add(DOCS["pickle"])
    again = bank.add(DOCS["pickle"])
    assert again == first and len(bank) == len(first)
    other = bank.add(DOCS["bread"])
    assert not set(other) & set(first)
    with RecycleBank(bank.path / "nodedup", dedup=None) as b:
        b.add(DOCS["csv"])
        b.add(DOCS["csv"])
        assert len(b) == 2


def test_ttl_removes_old_units(tmp_path):
    with RecycleBank(tmp_path / "b", ttl=0.5) as b:
        b.add(DOCS["csv"])
        assert len(b) == 1
        time.sleep(0.7)
        b.add(DOCS["bread"])                          # expiry runs on every add
        assert [h.text for h in b.list()] == [DOCS["bread"]]
        time.sleep(0.7)
        assert b.expire() == 1 and len(b) == 0


def test_size_cap_drops_the_least_recently_used(tmp_path):
    with RecycleBank(tmp_path / "b", max_items=3) as b:
        ids = [b.add(t, segment_text=False)[0] for t in DOCS.values()]
        assert len(b) == 3 and ids[0] not in {h.id for h in b.list()}
        b.search("pickle serializes objects", k=1)     # pickle is used: it stays
        b.add("A completely different note about the weather in spring.")
        left = {h.id for h in b.list()}
        assert len(left) == 3 and ids[1] in left and ids[2] not in left


def test_forget_clear_and_stats(bank):
    ids = bank.add(DOCS["asyncio"], source="cell")
    ids += bank.add(DOCS["csv"], source="reply")
    s = bank.stats()
    assert s["rsus"] == len(ids) and set(s["sources"]) == {"cell", "reply"} and s["embedded"]
    assert s["model"] == "all-MiniLM-L6-v2" and s["dim"] == 384
    assert bank.forget(ids[0]) == 1 and bank.forget(ids[0]) == 0
    assert len(bank) == len(ids) - 1 and ids[0] not in {h.id for h in bank.search("event loop", k=10)}
    assert bank.clear() == len(ids) - 1 and len(bank) == 0 and bank.search("csv", k=2) == []


def test_a_second_opener_gets_a_clear_message(tmp_path):
    path = tmp_path / "b"
    with RecycleBank(path):
        code = f"from ryzjupyter.memory.bank import RecycleBank\nRecycleBank({str(path)!r})"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "BankBusyError" in r.stderr and "already open" in r.stderr
        with pytest.raises(BankBusyError, match="Qdrant server"):
            RecycleBank(path)
    RecycleBank(path).close()                          # free again once closed


def test_bad_input_is_a_clear_error(tmp_path, bank):
    with pytest.raises(BankError, match="empty text"):
        bank.add("")
    with pytest.raises(BankError, match="empty text"):
        bank.add("  \n\t ")
    with pytest.raises(BankError, match="add the text in parts"):
        bank.add("word " * 500_000)
    with pytest.raises(BankError, match="takes text"):
        bank.add(b"bytes")
    with pytest.raises(BankError, match="source must be one of"):
        bank.add("hello", source="email")
    with pytest.raises(BankError, match="JSON"):
        bank.add("hello", meta={"f": object()})
    with pytest.raises(BankError, match="k must be"):
        bank.search("x", k=0)
    assert len(bank) == 0
    other = tmp_path / "not-a-bank"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BankError, match="not a RecycleBank folder"):
        RecycleBank(other)
    assert os.listdir(other) == ["notes.txt"]
    with pytest.raises(BankError, match="is a file"):
        RecycleBank(other / "notes.txt")
    with pytest.raises(BankError, match="ttl"):
        RecycleBank(tmp_path / "x", ttl=-1)
    with pytest.raises(ConnectionError, match="cannot reach the Qdrant server"):
        RecycleBank(url="http://127.0.0.1:9", timeout=1)
    bank.close()
    with pytest.raises(BankError, match="closed"):
        bank.search("x")


def test_two_stage_search_past_the_exact_size_finds_the_exact_top(tmp_path, monkeypatch):
    """Past EXACT_ROWS the search is an int8 pass then a float32 rescoring of the rows the int8
    pass's error bound cannot rule out: on real embeddings its top hits are the exact search's."""
    from ryzjupyter.memory import bank as B

    with RecycleBank(tmp_path / "b", dedup=None) as b:
        for name, text in DOCS.items():
            b.add(text, segment_text=False, meta={"doc": name})
        for i in range(12):
            b.add(f"Note {i}: the {['csv', 'pickle', 'bread', 'loop'][i % 4]} detail number {i}.", segment_text=False)
        q = b.encoder.encode(["reading rows of a csv file"])[0]
        exact = [h.id for h in b.search_vector(q, k=3, count_use=False)]
        monkeypatch.setattr(B, "EXACT_ROWS", 4)
        monkeypatch.setattr(B, "BLOCK", 3)
        two = b.search_vector(q, k=3, count_use=False)
        assert [h.id for h in two] == exact
        assert two[0].score == pytest.approx(float(q @ b._vecs[b._pos[two[0].id]]), abs=1e-6)


@pytest.fixture(scope="module")
def real_vectors():
    """Real embeddings: the lines of the demo model's held-back text, some of them twice (equal
    vectors: ties), and a few paraphrase-like variants (near ties)."""
    from ryzjupyter.memory.embedding import embed
    from ryzjupyter.models import MODELS_DIR

    lines = [l.strip() for l in (MODELS_DIR / "demo" / "validation.txt").read_text(encoding="utf-8").splitlines()
             if l.strip()][:600]
    lines += lines[:40] + [l + "." for l in lines[40:80]]
    return embed(lines)


def _mirror_of(vectors):
    from ryzjupyter.bench.memory import _bank_on

    return _bank_on(vectors)


@pytest.mark.parametrize("kind", ["real", "random"])
def test_two_stage_search_is_the_exact_ranking_on_every_isa(isa, monkeypatch, real_vectors, kind):
    """Ids and scores of the two-stage top k equal the exact float32 ranking's (ties: the lower
    row first) for k = 1, 5, 20, on one thread and on all, on real embeddings (with duplicates) and on random unit vectors,
    with queries from the set and from outside it."""
    from ryzjupyter.memory import bank as B

    rng = np.random.default_rng(7)
    if kind == "real":
        v = real_vectors
    else:
        v = rng.standard_normal((3000, 384)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    b = _mirror_of(v)
    monkeypatch.setattr(B, "EXACT_ROWS", 0)
    qs = np.concatenate([v[rng.choice(len(v), 25, replace=False)], rng.standard_normal((5, 384)).astype(np.float32)])
    qs[-5:] /= np.linalg.norm(qs[-5:], axis=1, keepdims=True)
    for block, one_thread_rows in ((64, B.ONE_THREAD_ROWS), (8, 0)):       # one thread, then all of them
        monkeypatch.setattr(B, "BLOCK", block)
        monkeypatch.setattr(B, "ONE_THREAD_ROWS", one_thread_rows)
        for q in qs:
            exact = b._scores(q)
            for k in (1, 5, 20):
                rows, s = b._top(q, k)
                want = np.lexsort((np.arange(len(v)), -exact))[:k]
                np.testing.assert_array_equal(rows, want)
                np.testing.assert_array_equal(s, exact[want])


def test_the_int8_pass_error_bound_holds(isa, real_vectors):
    """|q.v - a| <= |q| |v - v8| + |q - q8| |v8| for every row (float64 dot products), the bound
    the two-stage search relies on, on real embeddings and on vectors of other norms."""
    from ryzjupyter import _native
    from ryzjupyter.memory.bank import _quantize_rows

    rng = np.random.default_rng(3)
    for v in (real_vectors, rng.standard_normal((500, 384)).astype(np.float32) * 3,
              rng.laplace(size=(500, 384)).astype(np.float32)):
        q8, s8, e8, h8 = _quantize_rows(v)
        for q in (v[0], v[5] * 0.5, rng.standard_normal(384).astype(np.float32)):
            xq, xs, _, _ = _quantize_rows(q[None])
            a = np.empty((1, len(v)), np.float32)
            _native.matmul_i8(a, xq, xs, q8, s8)
            q64 = q.astype(np.float64)
            dq = np.linalg.norm(q64 - xq[0] / np.float64(xs[0]))
            bound = np.linalg.norm(q64) * e8 + dq * h8
            err = np.abs(v.astype(np.float64) @ q64 - a[0])
            assert (err <= bound * (1 + 1e-5) + 1e-6).all()
            assert err.max() > 0                                # the bound is about something


def test_mirror_rows_follow_adds_overwrites_and_drops():
    """The int8 copy, scales and bound norms of a row move with it when rows are dropped."""
    from ryzjupyter.memory.bank import _quantize_rows

    rng = np.random.default_rng(5)
    v = rng.standard_normal((70, 384)).astype(np.float32)
    b = _mirror_of(v[:50])
    b._mirror_put([str(i) for i in range(45, 70)], v[45:70])            # 5 overwritten, 20 new
    b._mirror_drop([str(i) for i in range(0, 70, 3)])
    q8, s8, e8, h8 = _quantize_rows(v)
    assert len(b._ids) == 70 - len(range(0, 70, 3))
    for n, i in enumerate(b._ids):
        j = int(i)
        assert b._pos[i] == n
        np.testing.assert_array_equal(b._vecs[n], v[j])
        np.testing.assert_array_equal(b._q8[n], q8[j])
        assert (b._s8[n], b._e8[n], b._h8[n]) == (s8[j], e8[j], h8[j])


def test_listeners_hear_every_change(bank):
    events = []
    stop = bank.subscribe(events.append)
    bank.subscribe(lambda e: 1 / 0)                     # a failing listener changes nothing
    ids = bank.add(DOCS["csv"], segment_text=False)
    bank.search("csv rows", k=1)                        # reading is not a change
    assert bank.forget([]) == 0                           # nothing forgotten: no event
    bank.forget(ids)
    bank.add(DOCS["bread"], segment_text=False)
    bank.clear()
    assert events == ["add", "forget", "add", "clear"]
    stop()
    bank.add(DOCS["pickle"], segment_text=False)
    assert events == ["add", "forget", "add", "clear"]


def test_an_in_memory_bank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RYZ_DATA_DIR", str(tmp_path / "data"))
    with RecycleBank(":memory:", namespace="scratch") as b:
        ids = b.add(DOCS["csv"], source="file", segment_text=False)
        assert b.search("comma separated rows", k=1)[0].id == ids[0]
        assert b.stats()["store"] == ":memory:" and "':memory:'" in repr(b)
    assert list(tmp_path.iterdir()) == []                 # no folder, no marker, no data directory


def test_newest_units_in_the_listing_order(bank):
    """newest(n) and list(n) give the first n units of the full listing (newest add first, one
    add's units in the text's order), for every n, including an add cut at the boundary."""
    bank.add(DOCS["csv"], source="file", segment_text=False)
    time.sleep(0.01)
    bank.add("\n\n".join(DOCS[k] for k in ("asyncio", "pickle", "bread")), source="text")   # several units
    time.sleep(0.01)
    bank.add(DOCS["pickle"] + " Also: pickles are cucumbers.", source="cell", segment_text=False, meta={"n": 3})
    full = bank.list()
    assert len(full) == bank.count() >= 4
    assert len({h.time for h in full[1:-1]}) == 1 and len(full) - 2 >= 2     # the middle add: one time, cut below
    for n in range(1, len(full) + 2):
        got = bank.newest(n)
        assert [h.id for h in got] == [h.id for h in full[:n]], n
        assert [h.id for h in bank.list(n)] == [h.id for h in full[:n]]
    assert got[0].meta == {"n": 3} and got[0].source == "cell"
    for bad in (0, -1, "3", True):
        with pytest.raises(BankError, match="limit must be a positive int"):
            bank.newest(bad)


def test_newest_reads_a_long_add_cut_at_the_boundary_whole():
    """An add of 300 units, stored last-first, then one newer unit: newest(10) is the new unit and
    the long add's first 9 units in order (the scroll reads more until it is past that add)."""
    from ryzjupyter.bench.memory import fill_units

    with RecycleBank(":memory:", namespace="long", dedup=None) as b:
        older = fill_units(b, 50, seed=1)
        from qdrant_client import models
        t = b.newest(1)[0].time + 10
        pts = [models.PointStruct(id=f"00000000-0000-0000-0000-{o:012d}", vector=[1.0] + [0.0] * (b.encoder.dim - 1),
                                  payload={"text": f"long {o}", "source": "text", "time": t, "order": o, "uses": 0,
                                           "last_used": t, "meta": {}})
               for o in reversed(range(300))]
        b.client.upsert(b.collection, points=pts, wait=True)
        b.client.upsert(b.collection, points=[models.PointStruct(
            id="ffffffff-0000-0000-0000-000000000000", vector=[0.0, 1.0] + [0.0] * (b.encoder.dim - 2),
            payload={"text": "newest", "source": "cell", "time": t + 1, "order": 0, "uses": 0, "last_used": t + 1})],
            wait=True)
        got = b.newest(10)
        assert [h.text for h in got] == ["newest"] + [f"long {o}" for o in range(9)]
        assert [h.id for h in b.newest(400)][301:] == older[:50][:99]


@pytest.mark.slow
def test_the_sidebars_listing_reads_only_what_it_shows_at_20k_units(monkeypatch):
    """A bank of 20 000 units: newest(20) returns the 20 newest in order, reading 84 units from the
    store (not 20 000), and it is several times faster than reading every unit (side by side,
    alternating, medians: a ratio, so a loaded machine does not fail it)."""
    from ryzjupyter.bench.memory import fill_units

    with RecycleBank(":memory:", namespace="big", dedup=None) as b:
        order = fill_units(b, 20_000)
        assert b.count() == 20_000
        read = []
        real_scroll = b.client.scroll

        def counting_scroll(*a, **kw):               # the store's own scroll, its records counted
            pts, nxt = real_scroll(*a, **kw)
            read.append(len(pts))
            return pts, nxt
        monkeypatch.setattr(b.client, "scroll", counting_scroll)
        got = b.newest(20)
        assert [h.id for h in got] == order[:20]
        assert sum(read) <= 20 + 64
        read.clear()
        assert [h.id for h in b.list()][:20] == order[:20] and sum(read) == 20_000
        monkeypatch.setattr(b.client, "scroll", real_scroll)
        new, full = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            b.newest(20)
            new.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b.list()
            full.append(time.perf_counter() - t0)
        assert np.median(full) > 4 * np.median(new), (new, full)


def test_counting_uses_is_one_batch_write_and_counts_stay_right(tmp_path, monkeypatch):
    """count_uses and search(count_use=True) write every unit's new count in one
    batch_update_points call (no set_payload per unit); the counts add up across calls, survive
    reopening, and a missing id or one given twice counts once at most."""
    b = RecycleBank(tmp_path / "bank", dedup=None)
    ids = [b.add(t, segment_text=False)[0] for t in DOCS.values()]
    calls = []
    for name in ("set_payload", "batch_update_points"):
        real = getattr(b.client, name)

        def spy(*a, _real=real, _name=name, **kw):   # the store's own method, its calls noted
            calls.append((_name, len(kw.get("update_operations", ()))))
            return _real(*a, **kw)
        monkeypatch.setattr(b.client, name, spy)
    assert b.count_uses(ids[:3] + [ids[0], "00000000-0000-0000-0000-000000000000"]) == 3
    assert calls == [("batch_update_points", 3)]
    calls.clear()
    hits = b.search(DOCS["csv"], k=4)
    assert calls == [("batch_update_points", 4)]
    calls.clear()
    assert b.count_uses([]) == 0 and b.search("x", k=1, count_use=False) and calls == []
    b.count_uses(ids[2])
    want = {ids[0]: 2, ids[1]: 2, ids[2]: 3, ids[3]: 1}
    assert {h.id: h.uses for h in b.list()} == want
    assert all(h.uses == want[h.id] - 1 - (h.id == ids[2]) for h in hits)   # what the search read, before it
    last = {h.id: b.client.retrieve(b.collection, [h.id])[0].payload["last_used"] for h in b.list()}
    assert len(set(last.values())) == 2                 # one time per call: the search's and the last count's
    b.close()
    with RecycleBank(tmp_path / "bank", dedup=None) as again:
        assert {h.id: h.uses for h in again.list()} == want
