"""`python -m ryzjupyter.bench memory`: the RSU bank's retrieval quality and search latency.

    python -m ryzjupyter.bench memory [--docs DIR] [--modules 20] [--questions 200]
                                      [--sizes 10000 100000] [--listing N] [--use-counting]
                                      [--json FILE]

Retrieval, on a labelled set built from real, openly licensed text: the Python 3.11 library
reference as Debian's python3.11-doc ships it (reStructuredText sources under
/usr/share/doc/python3.11/html/_sources/library; PSF licence). The first --modules module pages
(sorted by name, from a fixed list of common modules) are cut into sections at their headings;
every section goes into a fresh bank (add(): segmentation into RSUs, embedding, storage) with its
section id in meta. The questions are generated from the API directives: for each
``.. function:: name(...)`` / ``.. method::`` / ``.. class::`` the question is "What does
MODULE.NAME do?" and its answer section is the section holding the directive. Over --questions
of them (evenly spaced): hit rate at 5 (the answer section among the sections of the top 5
RSUs), precision at 5 (the share of the top 5 RSUs from the answer section) and MRR (the
reciprocal rank of the first RSU from it, over the top 10).

Latency, at each --sizes number of units (random unit vectors: the scan's cost does not depend
on the values): the bank's search (an int8 pass over every unit on our kernels, then the units
its error bound cannot rule out rescored in float32: the exact top k; all in float32 up to 4096) against qdrant-client's local mode
(``QdrantClient(":memory:")``, the embedded store's own search), p50 / p99 over the queries. And
the recall at 5 of the two-stage search against the exact one on the real RSU embeddings.

The sidebar's listing (--listing N): the newest 20 units and the count on a bank of N units
(adds of 1-8 units at increasing times), bank.newest() against reading every unit and sorting.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

DOCS = Path("/usr/share/doc/python3.11/html/_sources/library")
MODULES = ("argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv", "dataclasses",
           "datetime", "difflib", "enum", "fnmatch", "functools", "glob", "gzip", "hashlib", "heapq", "itertools",
           "json", "logging", "math", "operator", "os.path", "pathlib", "pickle", "random", "re", "secrets",
           "shutil", "sqlite3", "statistics", "string", "struct", "subprocess", "tempfile", "textwrap", "time",
           "uuid", "zipfile")
_HEADING = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\.\. (function|method|class|classmethod|staticmethod)::\s*([\w.]+)")


def sections(path: Path) -> list:
    """(heading, text) of each section of a reST page (headings: a line underlined by a run of one
    punctuation character at least as long); reST markup lightly cleaned."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out, title, buf = [], path.stem, []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _HEADING.match(lines[i + 1]) \
                and len(lines[i + 1].strip()) >= len(lines[i].strip()) and not _HEADING.match(lines[i]):
            if "".join(buf).strip():
                out.append((title, buf))
            title, buf = lines[i].strip(), []
            i += 2
            continue
        if not _HEADING.match(lines[i]):
            buf.append(lines[i])
        i += 1
    if "".join(buf).strip():
        out.append((title, buf))
    return out


def _clean(line: str) -> str:
    line = re.sub(r"^\s*\.\. (function|method|class|classmethod|staticmethod|attribute|data|exception)::\s*",
                  r"\1 ", line)
    line = re.sub(r":(func|meth|class|mod|attr|data|exc|term|ref|const|envvar|pep|rfc|keyword|option):`~?([^`]*)`",
                  r"\2", line)
    return line.replace("``", "")


def labelled_set(docs: Path, modules: int, questions: int):
    """(section texts with ids, questions with their answer section id)."""
    texts, qs = [], []
    for mod in MODULES[:modules]:
        path = docs / f"{mod}.rst.txt"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: install Debian's python3.11-doc (apt-get install python3.11-doc) "
                             "or pass --docs DIR")
        for n, (title, lines) in enumerate(sections(path)):
            sid = f"{mod}#{n}:{title}"
            body = "\n".join(_clean(l) for l in lines if not l.strip().startswith((".. index::", ".. module::",
                                                                                    ":synopsis:", ".. sectionauthor")))
            body = re.sub(r"\n\s*\n+", "\n\n", body).strip()
            if len(body) < 40:
                continue
            texts.append((sid, f"{title}\n\n{body}"))
            for l in lines:
                m = _DIRECTIVE.match(l.strip())
                if m:
                    name = m.group(2)
                    qual = name if name.startswith(mod + ".") else f"{mod}.{name}"
                    qs.append((f"What does {qual} do?", sid))
    step = max(1, len(qs) // questions)
    return texts, qs[::step][:questions]


def retrieval(args, rec) -> np.ndarray:
    from ryzjupyter.memory.bank import RecycleBank

    texts, qs = labelled_set(Path(args.docs), args.modules, args.questions)
    print(f"labelled set: {len(texts)} sections of {args.modules} module pages, {len(qs)} questions")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        bank = RecycleBank(Path(d) / "bank", dedup=None)
        for sid, text in texts:
            bank.add(text, source="file", meta={"section": sid})
        build_s = time.perf_counter() - t0
        n_rsus = len(bank)
        print(f"bank: {n_rsus} RSUs in {build_s:.0f} s")
        hits5, p5, rr = [], [], []
        qv = bank.encoder.encode([q for q, _ in qs])
        for (q, sid), v in zip(qs, qv):
            got = [h.meta.get("section") for h in bank.search_vector(v, k=10, count_use=False)]
            hits5.append(sid in got[:5])
            p5.append(sum(g == sid for g in got[:5]) / 5)
            rr.append(next((1 / (i + 1) for i, g in enumerate(got) if g == sid), 0.0))
        vecs = bank._vecs[:len(bank._ids)].copy()
        bank.close()
    r = rec(kind="memory_retrieval", sections=len(texts), modules=args.modules, questions=len(qs), rsus=n_rsus,
            build_s=build_s, hit_at_5=float(np.mean(hits5)), precision_at_5=float(np.mean(p5)), mrr=float(np.mean(rr)),
            examples=[q for q, _ in qs[:3]])
    print(f"hit@5 {r['hit_at_5']:.3f}  precision@5 {r['precision_at_5']:.3f}  MRR {r['mrr']:.3f}")
    return np.concatenate([vecs, qv])


def _bank_on(vectors: np.ndarray):
    """A bank object whose mirror holds `vectors` (no store behind it): times the search itself."""
    from ryzjupyter.memory import bank as B

    b = object.__new__(B.RecycleBank)
    b._ids, b._pos = [], {}

    class _Enc:
        dim = vectors.shape[1]
    b.encoder = _Enc()
    b._empty_mirror()
    b._mirror_put([str(i) for i in range(len(vectors))], vectors)
    return b


def recall_two_stage(real: np.ndarray, rec, n_queries=200, source="the retrieval set's RSUs"):
    """Recall at 5 of the two-stage search against the exact one: a returned unit counts when its
    exact cosine is at least the exact 5th best (units with equal vectors, such as repeated
    sentences, are the same answer whichever of them is returned)."""
    from ryzjupyter.memory import bank as B

    rng = np.random.default_rng(0)
    b = _bank_on(real)
    queries = real[rng.choice(len(real), min(n_queries, len(real)), replace=False)]
    saved = B.EXACT_ROWS
    agree = []
    try:
        for q in queries:
            exact = np.sort(real @ q)[::-1]
            B.EXACT_ROWS = 0
            rows, _ = b._top(q, 5)
            agree.append(float(np.mean(real[rows] @ q >= exact[4] - 1e-6)))
    finally:
        B.EXACT_ROWS = saved
    r = rec(kind="memory_recall", vectors=len(real), queries=len(queries), recall_at_5=float(np.mean(agree)),
            source=source, method="bound")
    print(f"two-stage vs exact search on {len(real)} real embeddings ({source}): recall@5 {r['recall_at_5']:.4f}")


QUESTIONS = ("How do I read rows from a comma separated file?", "When does the harbour open at night?",
             "What does the event loop run?", "Which function sorts a list in place?",
             "How are objects turned into bytes?", "Where is the configuration file kept?",
             "What happens when the queue is full?", "How long should the dough rise?",
             "Which module parses command line arguments?", "How do I join two paths?")


def _ms(ts, q):
    return 1e3 * float(np.percentile(ts, q))


def _timed(fn, items):
    fn(items[0])                                   # warm-up
    ts = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return ts


def _edge(v, qs, ids, threads, rec_top):
    """qdrant-edge-py (the embedded Qdrant engine) on the same vectors: exact search, then HNSW after
    its optimizer built the index; recall at 5 of HNSW against the exact top 5."""
    import qdrant_edge as qe

    folder = tempfile.mkdtemp(prefix="ryz_edge_")
    cfg = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=v.shape[1], distance=qe.Distance.Cosine),
                        max_search_threads=threads)
    sh = qe.EdgeShard.create(folder, cfg)
    try:
        t0 = time.perf_counter()
        for s in range(0, len(v), 2000):
            sh.update(qe.UpdateOperation.upsert_points(
                [qe.Point(id=ids[i], vector=v[i].tolist(), payload={"text": f"unit {i}"})
                 for i in range(s, min(len(v), s + 2000))]))
        sh.flush()
        fill_s = time.perf_counter() - t0

        def search(q, exact):
            return sh.search(qe.SearchRequest(query=qe.Query.Nearest(q.tolist()), limit=5, with_payload=False,
                                              params=qe.SearchParams(exact=exact)))
        exact_top = [[str(p.id) for p in search(q, True)] for q in qs]
        te = _timed(lambda q: search(q, True), list(qs))
        t0 = time.perf_counter()
        sh.optimize()
        build_s = time.perf_counter() - t0
        indexed = sh.info().indexed_vectors_count
        th = _timed(lambda q: search(q, False), list(qs))
        approx = [[str(p.id) for p in search(q, False)] for q in qs]
        recall = float(np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx, exact_top)]))
        ours = float(np.mean([len(set(o) & set(e)) / 5 for o, e in zip(rec_top, exact_top)]))
        return {"edge_version": _version("qdrant-edge-py"), "edge_fill_s": fill_s, "edge_exact_p50_ms": _ms(te, 50),
                "edge_exact_p99_ms": _ms(te, 99), "edge_index_s": build_s, "edge_indexed": int(indexed),
                "edge_hnsw_p50_ms": _ms(th, 50), "edge_hnsw_p99_ms": _ms(th, 99), "edge_hnsw_recall_at_5": recall,
                "bank_vs_edge_exact_at_5": ours}
    finally:
        sh.close()
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def real_paragraphs(docs: Path, n: int) -> list:
    """The first n paragraphs (blank-line separated, cleaned, at least 40 characters) of every page
    of the library reference, pages sorted by name."""
    out = []
    for page in sorted(Path(docs).glob("*.rst.txt")):
        for _, buf in sections(page):
            for para in re.split(r"\n\s*\n", "\n".join(_clean(l) for l in buf)):
                text = " ".join(para.split())
                if len(text) >= 40:
                    out.append(text)
                    if len(out) == n:
                        return out
    return out


def edge_on_real(docs: Path, n: int, rec, threads=2, n_queries=50):
    """qdrant-edge-py's HNSW on real embeddings (n paragraphs of the library reference, queries the
    next n_queries paragraphs): its recall at 5 against the exact top 5, beside the bank's
    two-stage search's, and both latencies. Random vectors are the worst case for a graph index."""
    import uuid

    from ryzjupyter.memory.embedding import embed

    texts = real_paragraphs(docs, n + n_queries)
    if len(texts) < n + n_queries:
        print(f"edge on real embeddings: only {len(texts)} paragraphs in {docs}; skipped")
        return
    t0 = time.perf_counter()
    vecs = embed(texts)
    embed_s = time.perf_counter() - t0
    real, qs = vecs[:n], vecs[n:]
    b = _bank_on(real)
    ours = [[b._ids[int(r)] for r in b._top(q, 5)[0]] for q in qs]
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    ours = [[ids[int(i)] for i in row] for row in ours]
    extra = _edge(real, qs, ids, threads, ours)
    scan = _timed(lambda q: b._top(q, 5), list(qs))
    r = rec(kind="memory_edge_real", units=n, queries=len(qs), source=f"paragraphs of {docs}", embed_s=embed_s,
            p50_ms=_ms(scan, 50), p99_ms=_ms(scan, 99), **extra, load_avg=os.getloadavg()[0])
    print(f"{n} real paragraph embeddings: bank scan p50 {r['p50_ms']:.2f} ms, the exact top 5 for "
          f"{r['bank_vs_edge_exact_at_5']:.3f}; qdrant-edge exact p50 {r['edge_exact_p50_ms']:.2f} ms, HNSW p50 "
          f"{r['edge_hnsw_p50_ms']:.2f} ms recall@5 {r['edge_hnsw_recall_at_5']:.3f} (index {r['edge_index_s']:.1f} s)")


def latency(sizes, rec, n_queries=50, qdrant_queries=10, threads=2, edge=True):
    """At each size: the bank's scan alone (the mirror's two-stage search), its search() end to end
    (embedding the query text, the scan, the payloads from the store), qdrant-client's local mode
    on the same store, and qdrant-edge-py (exact and HNSW) when it is installed."""
    import uuid

    from qdrant_client import models

    from ryzjupyter.memory.bank import RecycleBank

    rng = np.random.default_rng(1)
    have_edge = False
    if edge:
        try:
            import qdrant_edge  # noqa: F401
            have_edge = True
        except ImportError as e:
            print(f"qdrant-edge-py not measured: {e}")
    for n in sizes:
        v = rng.standard_normal((n, 384)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids = [str(uuid.UUID(int=int(rng.integers(1 << 62)) << 64 | i)) for i in range(n)]
        bank = RecycleBank(":memory:", namespace="latency", dedup=None)
        t0 = time.perf_counter()
        for s in range(0, n, 2000):
            e = min(n, s + 2000)
            bank.client.upsert(bank.collection, wait=True, points=models.Batch(
                ids=ids[s:e], vectors=v[s:e].tolist(),
                payloads=[{"text": f"unit {i}", "source": "text", "model": bank.model_name, "namespace": "latency",
                           "time": 0.0, "order": 0, "last_used": 0.0, "uses": 0, "meta": {}} for i in range(s, e)]))
        bank._mirror_put(ids, v)
        fill_s = time.perf_counter() - t0
        qs = rng.standard_normal((n_queries, 384)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        ts = _timed(lambda q: bank._top(q, 5), list(qs))
        rescored = [(bank._top(q, 5), getattr(bank, "rescored", n))[1] for q in qs]
        qe_qs = qs[:qdrant_queries] if n > 20_000 else qs          # qdrant-edge's exact scan is slow past that
        top = [[bank._ids[int(r)] for r in bank._top(q, 5)[0]] for q in qe_qs]
        texts = [f"{QUESTIONS[i % len(QUESTIONS)]} ({i})" for i in range(n_queries)]
        tenc = _timed(lambda t: bank.encoder.encode([t]), texts)
        tsearch = _timed(lambda t: bank.search(t, k=5, count_use=False), texts)
        ab = _side_by_side(bank, qs, texts)
        tq = _timed(lambda q: bank.client.query_points(bank.collection, query=q.tolist(), limit=5, with_payload=False),
                    list(qs[:qdrant_queries]))
        bank.close()
        extra = _edge(v, qe_qs, ids, threads, top) if have_edge else {}
        r = rec(kind="memory_latency", units=n, queries=len(ts), p50_ms=_ms(ts, 50), p99_ms=_ms(ts, 99),
                search_queries=len(tsearch), search_p50_ms=_ms(tsearch, 50), search_p99_ms=_ms(tsearch, 99),
                encode_p50_ms=_ms(tenc, 50), qdrant_local_queries=len(tq), qdrant_local_p50_ms=_ms(tq, 50),
                qdrant_local_p99_ms=_ms(tq, 99), qdrant_client_version=_version("qdrant-client"),
                fill_s=fill_s, threads=threads, method="bound", rescored_p50=float(np.median(rescored)),
                rescored_max=int(np.max(rescored)), encoder_weights=bank.encoder.weight_format, **ab, **extra,
                load_avg=os.getloadavg()[0])
        line = (f"{n:>7} units: bank scan p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms; search(text) end to end "
                f"p50 {r['search_p50_ms']:.1f} ms p99 {r['search_p99_ms']:.1f} ms (query embedding p50 "
                f"{r['encode_p50_ms']:.1f} ms); qdrant-client local p50 {r['qdrant_local_p50_ms']:.0f} ms")
        if extra:
            line += (f"; qdrant-edge exact p50 {r['edge_exact_p50_ms']:.1f} ms, HNSW p50 {r['edge_hnsw_p50_ms']:.2f} ms "
                     f"(recall@5 {r['edge_hnsw_recall_at_5']:.3f}, index built in {r['edge_index_s']:.1f} s)")
        e = r["ab_encode_p50_ms"]
        print(line + f" (load {r['load_avg']:.1f}); side by side: embedding default {e['default']:.2f} ms, float32 all "
              f"threads {e['f32_all_threads']:.2f} ms; scan {r['ab_scan_p50_ms']} (all threads {r['ab_scan_all_threads_p50_ms']}); "
              f"search {r['ab_search_p50_ms']}")


def _side_by_side(bank, qs, texts):
    """Measured in one process, alternating query by query (the machine is shared, so only figures
    taken side by side compare): the question's embedding with the default encoder (float16
    weights, one thread up to 64 tokens) and with float32 weights on all threads (the encoder
    before them); the scan and search(text) end to end at every ISA level this CPU has."""
    from ryzjupyter import _native
    from ryzjupyter.families import bert
    from ryzjupyter.memory import bank as B

    f32 = bert.Encoder(bank.encoder.folder, weights="f32")
    one_thread = bert.ONE_THREAD_TOKENS

    def f32_all_threads(t):
        bert.ONE_THREAD_TOKENS = 0
        try:
            f32.encode([t])
        finally:
            bert.ONE_THREAD_TOKENS = one_thread

    enc = {"default": [], "f32_all_threads": []}
    f32_all_threads(texts[0])
    for t in texts:
        for name, fn in (("default", lambda t: bank.encoder.encode([t])), ("f32_all_threads", f32_all_threads)):
            t0 = time.perf_counter()
            fn(t)
            enc[name].append(time.perf_counter() - t0)
    levels = _native.info()["supported_isas"]
    levels = [l for l in levels if l != "scalar"] or levels
    previous = _native.info()["isa"]
    scan = {l: [] for l in levels}
    scan_all = {l: [] for l in levels}
    search = {l: [] for l in levels}
    try:
        for q, t in zip(qs, texts):
            for l in levels:
                _native.set_isa(l)
                t0 = time.perf_counter()
                bank._top(q, 5)
                scan[l].append(time.perf_counter() - t0)
                one_thread, B.ONE_THREAD_ROWS = B.ONE_THREAD_ROWS, 0
                try:
                    t0 = time.perf_counter()
                    bank._top(q, 5)
                    scan_all[l].append(time.perf_counter() - t0)
                finally:
                    B.ONE_THREAD_ROWS = one_thread
                t0 = time.perf_counter()
                bank.search(t, k=5, count_use=False)
                search[l].append(time.perf_counter() - t0)
    finally:
        _native.set_isa(previous)
    return {"ab_queries": len(texts), "ab_encode_p50_ms": {k: _ms(v, 50) for k, v in enc.items()},
            "ab_scan_p50_ms": {l: _ms(v, 50) for l, v in scan.items()},
            "ab_scan_all_threads_p50_ms": {l: _ms(v, 50) for l, v in scan_all.items()},
            "ab_search_p50_ms": {l: _ms(v, 50) for l, v in search.items()},
            "ab_search_p99_ms": {l: _ms(v, 99) for l, v in search.items()}}


def use_counting(rec, units=200, queries=30):
    """What counting a search's uses costs on a bank persisted in a folder (qdrant-client's local
    mode commits every payload update to its SQLite file): search(count_use=True) against
    search(count_use=False) on the same queries."""
    from ryzjupyter.memory.bank import RecycleBank

    with tempfile.TemporaryDirectory() as d:
        bank = RecycleBank(Path(d) / "bank", namespace="uses", dedup=None)
        bank.add("\n\n".join(f"Note {i}: {QUESTIONS[i % len(QUESTIONS)]}" for i in range(units)), source="text",
                 segment_text=True)
        texts = [f"{QUESTIONS[i % len(QUESTIONS)]} ({i})" for i in range(queries)]
        off = _timed(lambda t: bank.search(t, k=5, count_use=False), texts)
        on = _timed(lambda t: bank.search(t, k=5, count_use=True), texts)
        # the write alone, side by side on the same 5 units, alternating: the bank's one
        # batch_update_points call against one set_payload call per unit (what it did before)
        hits = bank.search(texts[0], k=5, count_use=False)

        def one_by_one():
            now = time.time()
            for h in hits:
                bank.client.set_payload(bank.collection, payload={"last_used": now, "uses": h.uses + 1},
                                        points=[h.id], wait=True)
        batch, loop = [], []
        for _ in range(queries):
            for fn, ts in ((lambda: bank._count(hits), batch), (one_by_one, loop)):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        n = len(bank)
        bank.close()
    r = rec(kind="memory_use_count", units=n, queries=queries, k=5, p50_off_ms=_ms(off, 50),
            p50_on_ms=_ms(on, 50), p99_on_ms=_ms(on, 99), write_batch_p50_ms=_ms(batch, 50),
            write_loop_p50_ms=_ms(loop, 50), load_avg=os.getloadavg()[0])
    print(f"use counting on a persisted bank of {n} units: search p50 {r['p50_off_ms']:.1f} ms without, "
          f"{r['p50_on_ms']:.1f} ms with (k=5); the 5 counts written in one batch p50 {r['write_batch_p50_ms']:.1f} ms, "
          f"one call per unit {r['write_loop_p50_ms']:.1f} ms")


def fill_units(bank, n_units, seed=0, max_per_add=8):
    """Store `n_units` units in `bank` as its add() stores them (the same payload fields), without
    embedding anything: adds of 1..max_per_add units at increasing times (the units of one add
    share its time, as add() writes them), random unit vectors. Returns the ids in the order the
    listing shows them (newest add first, one add's units in their order)."""
    from qdrant_client import models

    rng = np.random.default_rng(seed)
    t, points, adds = 1.7e9, [], []
    while len(points) < n_units:
        k = min(int(rng.integers(1, max_per_add + 1)), n_units - len(points))
        t += float(rng.uniform(0.5, 30.0))
        ids = []
        for order in range(k):
            v = rng.standard_normal(bank.encoder.dim).astype(np.float32)
            pid = str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | len(points)))
            points.append(models.PointStruct(id=pid, vector=(v / np.linalg.norm(v)).tolist(), payload={
                "text": f"unit {len(points)} of add {len(adds)}", "source": "text", "model": bank.model_name,
                "namespace": bank.namespace, "time": t, "order": order, "last_used": t, "uses": 0, "meta": {}}))
            ids.append(pid)
        adds.append(ids)
    for i in range(0, len(points), 1024):
        bank.client.upsert(bank.collection, points=points[i:i + 1024], wait=True)
    return [pid for ids in reversed(adds) for pid in ids]


def listing(rec, units=20_000, limit=20, reps=5):
    """The sidebar's Memory request at `units` units: the newest `limit` units (bank.newest: a
    scroll ordered by time) and the count, against reading every unit and sorting them (what
    list() without a limit does, and what the sidebar did before), alternating, p50 of `reps`."""
    from ryzjupyter.memory.bank import RecycleBank

    with RecycleBank(":memory:", namespace="listing", dedup=None) as bank:
        order = fill_units(bank, units)
        assert [h.id for h in bank.newest(limit)] == order[:limit]
        assert [h.id for h in bank.list()][:limit] == order[:limit]
        new, full = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            bank.newest(limit)
            bank.count()
            new.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bank.list()[:limit]
            bank.count()
            full.append(time.perf_counter() - t0)
    r = rec(kind="memory_listing", units=units, limit=limit, reps=reps, newest_p50_ms=_ms(new, 50),
            all_p50_ms=_ms(full, 50), speedup=float(np.median(full) / np.median(new)), load_avg=os.getloadavg()[0])
    print(f"the newest {limit} of {units} units and the count: p50 {r['newest_p50_ms']:.0f} ms, reading every unit "
          f"{r['all_p50_ms']:.0f} ms ({r['speedup']:.1f}x; load {r['load_avg']:.1f})")


def _answer_nll(model, context_ids, answer_ids):
    """Sum of -log p(answer token | everything before it), from the engine's logits (float64)."""
    ids = list(context_ids) + list(answer_ids)
    logits = model.logits(ids[:-1]).astype(np.float64)[len(context_ids) - 1:]
    m = logits.max(axis=1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float(np.sum(logz - logits[np.arange(len(answer_ids)), answer_ids]))


def perplexity_with_recycling(args, rec):
    """The perplexity of reference answers with recycling off and on, on held-back text: the model's
    validation.txt (never trained on). Its first --ppl-verses lines go into a bank in passages of 10
    lines (add(): segmentation, embedding); every --ppl-questions-th of them becomes a question: its
    first half (by words) is the prompt, the rest the reference answer. Off: the answer's
    perplexity after the prompt alone. On: after the prompt with what recycle= would put before it
    (decoding/recycling.py, k 3, budget 192 tokens)."""
    import ryzjupyter
    from ryzjupyter.decoding import recycling
    from ryzjupyter.memory.bank import RecycleBank

    model = ryzjupyter.load(args.model)
    folder = Path(getattr(model, "path", "") or "")
    lines = [l.strip() for l in (folder / "validation.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    lines = lines[:args.ppl_verses]
    tok = model.tokenizer
    nll_off = nll_on = 0.0
    count = found = asked = 0
    with tempfile.TemporaryDirectory() as d:
        bank = RecycleBank(Path(d) / "bank", dedup=None)
        for i in range(0, len(lines), 10):
            bank.add("\n\n".join(lines[i:i + 10]), source="file")
        for line in lines[::args.ppl_every]:
            words = line.split()
            if len(words) < 8:
                continue
            prompt, answer = " ".join(words[:len(words) // 2]), " " + " ".join(words[len(words) // 2:])
            p_ids, full = tok.encode(prompt), tok.encode(prompt + answer)
            if full[:len(p_ids)] != p_ids:
                continue
            a_ids = full[len(p_ids):]
            recalled = recycling.recall(bank, prompt, tok, k=3, budget=192)
            ctx = tok.encode(recycling.with_context(prompt, recalled))
            if len(ctx) + len(a_ids) > model.max_context:
                continue
            nll_off += _answer_nll(model, p_ids, a_ids)
            nll_on += _answer_nll(model, ctx, a_ids)
            count += len(a_ids)
            asked += 1
            found += any(line in r.text for r in recalled)
        bank.close()
    r = rec(kind="memory_ppl", model=str(args.model or "demo"), verses=len(lines), questions=asked,
            answer_tokens=count, answer_in_context=found, ppl_off=float(np.exp(nll_off / count)),
            ppl_on=float(np.exp(nll_on / count)))
    print(f"perplexity of {asked} reference answers ({count} tokens): recycling off {r['ppl_off']:.2f}, on "
          f"{r['ppl_on']:.2f} (the answer's line was among the recalled units for {found} of them)")


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="the RSU bank: retrieval on the Python docs, search latency at 10k/100k")
    p.add_argument("--docs", default=str(DOCS), help=f"reST sources of the library reference (default {DOCS})")
    p.add_argument("--modules", type=int, default=20, help="module pages in the bank (default 20)")
    p.add_argument("--questions", type=int, default=200, help="questions asked (default 200)")
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="bank sizes for the latency")
    p.add_argument("--threads", type=int, default=2, help="native threads (default 2)")
    p.add_argument("--recall-lines", type=int, default=0,
                   help="with --modules 0: the two-stage recall on this many embedded lines of the demo text")
    p.add_argument("--model", default=None, help="model for the perplexity part (default: the bundled demo model)")
    p.add_argument("--ppl-verses", type=int, default=600, help="held-back lines in the perplexity bank (0: skip)")
    p.add_argument("--ppl-every", type=int, default=10, help="every N-th line becomes a question (default 10)")
    p.add_argument("--no-edge", action="store_true", help="do not measure qdrant-edge-py even when it is installed")
    p.add_argument("--edge-real", type=int, default=0, metavar="N",
                   help="qdrant-edge-py's HNSW recall and latency on N real paragraph embeddings of --docs (0: skip)")
    p.add_argument("--listing", type=int, default=0, metavar="N",
                   help="time the sidebar's newest-units request on a bank of N units (0: skip)")
    p.add_argument("--use-counting", action="store_true",
                   help="time counting uses on a persisted bank even without --sizes")
    p.add_argument("--json", metavar="FILE", help="write the records (and the machine) to FILE")
    p.set_defaults(run=run)


def run(args) -> int:
    from ryzjupyter import _native
    from ryzjupyter.bench import probes

    _native.set_num_threads(args.threads)
    where = probes.machine(getattr(args, "argv", None))
    load0 = os.getloadavg()
    records = []

    def rec(**kw):
        records.append(kw)
        return kw

    real = retrieval(args, rec) if args.modules > 0 else None
    if real is not None:
        recall_two_stage(real, rec)
    elif args.recall_lines > 0:
        from ryzjupyter.memory.embedding import embed
        from ryzjupyter.models import MODELS_DIR

        lines = [l.strip() for l in (MODELS_DIR / "demo" / "validation.txt").read_text(encoding="utf-8").splitlines()
                 if l.strip()][:args.recall_lines]
        recall_two_stage(embed(lines), rec, source="lines of the demo model's validation text")
    if args.ppl_verses > 0:
        perplexity_with_recycling(args, rec)
    if args.sizes:
        latency(args.sizes, rec, threads=args.threads, edge=not args.no_edge)
        use_counting(rec)
    elif args.use_counting:
        use_counting(rec)
    if args.listing > 0:
        listing(rec, units=args.listing)
    if args.edge_real > 0 and not args.no_edge:
        edge_on_real(Path(args.docs), args.edge_real, rec, threads=args.threads)
    load1 = os.getloadavg()
    if args.json:
        info = _native.info()
        meta = {"bench": "memory", "machine": where, "native": {k: info[k] for k in ("isa", "threads", "version")},
                "load_before": load0, "load_after": load1}
        with open(args.json, "w") as f:
            json.dump({**meta, "records": records}, f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0


def memory_tables(d: dict) -> list:
    """The report's lines for a `bench memory` record (bench/report.py)."""
    out = []
    for r in d["records"]:
        if r["kind"] == "memory_retrieval":
            out += [f"Retrieval: {r['questions']} questions (\"{r['examples'][0]}\") over {r['sections']} sections of "
                    f"{r['modules']} pages of the Python 3.11 library reference, {r['rsus']} RSUs: hit rate at 5 "
                    f"**{r['hit_at_5']:.3f}**, precision at 5 {r['precision_at_5']:.3f}, MRR {r['mrr']:.3f}.", ""]
        elif r["kind"] == "memory_recall":
            how = ("int8 pass with an error bound, the rows it cannot rule out rescored in float32"
                   if r.get("method") == "bound" else "int8 pass, best 64 rescored in float32")
            out += [f"Two-stage search ({how}) against the exact search on "
                    f"{r['vectors']} real embeddings ({r.get('source', 'RSUs')}): recall at 5 "
                    f"**{r['recall_at_5']:.4f}** ({r['queries']} queries; a unit as close as the exact 5th counts).", ""]
        elif r["kind"] == "memory_ppl":
            out += [f"Perplexity of {r['questions']} reference answers ({r['answer_tokens']} tokens) of held-back "
                    f"text, model {r['model']}: recycling off **{r['ppl_off']:.2f}**, on **{r['ppl_on']:.2f}** "
                    f"(the answer's line among the recalled units for {r['answer_in_context']} of them; "
                    f"{r['verses']} lines in the bank).", ""]
    lat = [r for r in d["records"] if r["kind"] == "memory_latency"]
    if lat and "search_p50_ms" not in lat[0]:            # the first records: the scan and qdrant-client only
        out += ["| units | bank search p50 ms | p99 ms | qdrant-client local p50 ms | p99 ms |", "|---|---|---|---|---|"]
        out += [f"| {r['units']:,} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['qdrant_local_p50_ms']:.0f} | "
                f"{r['qdrant_local_p99_ms']:.0f} |" for r in lat]
    elif lat:
        def pair(r, a, b, f=".1f"):
            return f"{r[a]:{f}} / {r[b]:{f}}" if a in r else "not measured"
        out += ["Milliseconds, p50 / p99. *Scan*: the bank's two-stage search over its in-memory matrix; "
                "*search(text)*: `bank.search(question, k=5, count_use=False)` end to end (embedding the "
                "question, the scan, the payloads from qdrant-client); the query embedding's p50 alone; "
                "qdrant-client's local mode (`query_points`) and qdrant-edge-py (exact, then HNSW after its "
                "optimizer built the index) on the same vectors, k = 5.", "",
                "| units | bank scan | bank search(text) | query embedding p50 | qdrant-client local | "
                "qdrant-edge exact | qdrant-edge HNSW | HNSW recall at 5 | HNSW build s |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in lat:
            edge = "edge_hnsw_p50_ms" in r
            cols = [f"{r['units']:,}", pair(r, "p50_ms", "p99_ms", ".2f"), pair(r, "search_p50_ms", "search_p99_ms"),
                    f"{r['encode_p50_ms']:.1f}", pair(r, "qdrant_local_p50_ms", "qdrant_local_p99_ms", ".0f"),
                    pair(r, "edge_exact_p50_ms", "edge_exact_p99_ms", ".2f"), pair(r, "edge_hnsw_p50_ms", "edge_hnsw_p99_ms", ".2f")
                    + (f" ({r['edge_indexed']:,} indexed)" if edge and r["edge_indexed"] < r["units"] else ""),
                    f"{r['edge_hnsw_recall_at_5']:.3f}" if edge else "", f"{r['edge_index_s']:.1f}" if edge else ""]
            out.append("| " + " | ".join(cols) + " |")
        v = next((r.get("edge_version") for r in lat if r.get("edge_version")), None)
        if v:
            same = ", ".join(f"{r['bank_vs_edge_exact_at_5']:.3f}" for r in lat if "bank_vs_edge_exact_at_5" in r)
            out += ["", f"qdrant-client {lat[0].get('qdrant_client_version')}, qdrant-edge-py {v} "
                        f"(`max_search_threads` {lat[0].get('threads')}); the bank's top 5 equal qdrant-edge's exact "
                        f"top 5 ({same} of them)."]
        for r in lat:
            if "ab_encode_p50_ms" not in r:
                continue
            e, sc, se, s99 = r["ab_encode_p50_ms"], r["ab_scan_p50_ms"], r["ab_search_p50_ms"], r["ab_search_p99_ms"]
            out += ["", f"At {r['units']:,} units, side by side in one process ({r['ab_queries']} questions, "
                        f"alternating): the question's embedding p50 {e['default']:.2f} ms with the default encoder "
                        f"({r['encoder_weights']} weights, one thread up to 64 tokens) against "
                        f"{e['f32_all_threads']:.2f} ms with float32 weights on all threads; per ISA level, the scan "
                        "p50 " + ", ".join(f"{l} {v:.2f} ms" for l, v in sc.items())
                        + " (on one thread, the default up to 10^6 units; on all threads: "
                        + ", ".join(f"{l} {v:.2f} ms" for l, v in r["ab_scan_all_threads_p50_ms"].items())
                        + ") and `search(text)` p50 / p99 "
                        + ", ".join(f"{l} {se[l]:.1f} / {s99[l]:.1f} ms" for l in se) + f". Rows rescored in float32 "
                        f"after the int8 pass (the rows its error bound cannot rule out): median "
                        f"{r['rescored_p50']:.0f}, at most {r['rescored_max']}."]
        out += ["", "Load average during the runs: " + ", ".join(f"{r['load_avg']:.1f}" for r in lat) + "."]
    for r in d["records"]:
        if r["kind"] == "memory_edge_real":
            out += ["", f"On {r['units']:,} real embeddings (paragraphs of the Python 3.11 library reference, "
                        f"{r['queries']} other paragraphs as queries): the bank's scan p50 "
                        f"{r['p50_ms']:.2f} ms, the exact top 5 for {r['bank_vs_edge_exact_at_5']:.3f} of them; "
                        f"qdrant-edge-py exact p50 {r['edge_exact_p50_ms']:.2f} ms, HNSW p50 "
                        f"{r['edge_hnsw_p50_ms']:.2f} ms with recall at 5 **{r['edge_hnsw_recall_at_5']:.3f}** "
                        f"(index built in {r['edge_index_s']:.1f} s; load average {r['load_avg']:.1f})."]
        if r["kind"] == "memory_listing":
            out += ["", f"The sidebar's Memory request (the newest {r['limit']} units and the count) on a bank of "
                        f"{r['units']:,} units: p50 **{r['newest_p50_ms']:.0f} ms** with `bank.newest()` (a scroll "
                        f"ordered by time), {r['all_p50_ms']:.0f} ms reading every unit and sorting them "
                        f"({r['speedup']:.1f}x; {r['reps']} runs each, alternating; load average {r['load_avg']:.1f})."]
        if r["kind"] == "memory_use_count":
            out += ["", f"Counting uses on a bank persisted in a folder ({r['units']} units, k = {r['k']}): "
                        f"search p50 {r['p50_off_ms']:.1f} ms without, {r['p50_on_ms']:.1f} ms with "
                        f"(qdrant-client's local mode commits each unit's payload update to its SQLite file)."]
            if "write_batch_p50_ms" in r:
                out[-1] += (f" The {r['k']} counts alone: one `batch_update_points` call p50 "
                            f"{r['write_batch_p50_ms']:.1f} ms, one `set_payload` call per unit "
                            f"{r['write_loop_p50_ms']:.1f} ms (alternating, {r['queries']} each; load average "
                            f"{r['load_avg']:.1f}).")
    return out
