"""`ryzjupyter.RecycleBank`: recycled semantic units (RSUs) kept in Qdrant.

    bank = ryzjupyter.RecycleBank()                         # ~/.local/share/ryzjupyter/recycle
    ids = bank.add(open("notes.md").read(), source="file")  # cut into RSUs, embedded, stored
    for hit in bank.search("how do I open a file?", k=5):
        print(hit.score, hit.text, hit.source, hit.meta)

The store is Qdrant through qdrant-client: an embedded local store in a folder (the default,
under the user's data directory, ``$RYZ_DATA_DIR`` or ``$XDG_DATA_HOME/ryzjupyter`` or
``~/.local/share/ryzjupyter``), or a Qdrant server with ``url=``. A namespace (per user, per
notebook) is one collection; every RSU carries its text, source (cell / reply / file / text),
the embedding model's name, its time, its uses, and the caller's meta.

Searching the embedded store: qdrant-client's local mode scans every point in Python (537 ms
at 100k RSUs, docs/memory.md), so the bank keeps the namespace's vectors in one float32 matrix
in memory (loaded from the store when the bank opens, updated with every write) with an int8
copy, and scores them on our kernels: an int8 pass over all, then float32 for the rows its error
bound cannot rule out (``_top``): exact, the same ranking as a float32 scan of every row.
With ``url=`` the server searches (its own index).

The listing the sidebar shows (``newest(n)``) reads only those n units: a scroll ordered by the
stored time. Writes are Qdrant upserts: each one is committed before ``add`` returns, so a crash
loses at most the call in progress; a call's use counts go to the store in one batch. One process at a time may open an embedded store (Qdrant's lock);
a second kernel opening the same folder gets a BankBusyError saying what to do (use a server,
or another path). The bank folder holds a ``ryz_bank.json`` marker; a folder that has files but
no marker is refused rather than written into.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import weakref
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ryzjupyter import _native
from ryzjupyter.memory.embedding import get_encoder
from ryzjupyter.memory.segmentation import segment

MARKER = "ryz_bank.json"
MAX_TEXT_CHARS = 2_000_000       # add() refuses more in one call (cut it yourself, or add a file in parts)
SOURCES = ("cell", "reply", "prompt", "file", "text")


_OPEN = weakref.WeakSet()        # banks still open: closed at exit, before the interpreter tears down


@atexit.register
def _close_open_banks():
    for bank in list(_OPEN):
        bank.close()


EXACT_ROWS = 4096   # up to this many units a search scores all of them in float32
BLOCK = 64          # past it, the best int8 row of each block of this many rows sets the float32 pass's bar
SLACK = 1e-4        # added to the int8 pass's error bound: the float rounding of both passes (~3e-5)
# A search of up to this many units runs its products on one thread: the int8 pass over 100k
# units is ~1.3 ms on one core (DRAM-bound), and on a machine shared with other jobs a second
# thread that is not running holds the barrier up (bench memory, side by side: 1.9 ms on one
# thread, 4.8 ms on two, load 5 on 2 cores)
ONE_THREAD_ROWS = 1_000_000


def _quantize_rows(v: np.ndarray):
    """int8 copies of the rows of v [n, dim] for the first search pass, q = round(v * s) with
    s = 127 / max|v| per row, the scales s, and what the first pass's error bound needs: the norm
    of each row's rounding error |v - q/s| and of its dequantized copy |q/s|."""
    v = np.asarray(v, np.float32)
    m = np.abs(v).max(axis=1) if v.shape[1] else np.zeros(len(v), np.float32)
    s = np.where(m > 0, np.float32(127) / np.where(m > 0, m, 1), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(v * s[:, None]), -127, 127).astype(np.int8)
    deq = q.astype(np.float64) / s[:, None].astype(np.float64)
    err = np.linalg.norm(v.astype(np.float64) - deq, axis=1).astype(np.float32)
    return q, s, err, np.linalg.norm(deq, axis=1).astype(np.float32)


def _quantize(v: np.ndarray):
    """int8 copy of one vector and its scale (``_quantize_rows`` of one row)."""
    q, s, _, _ = _quantize_rows(np.asarray(v, np.float32)[None])
    return q[0], s[0]


def _newest_first(p):
    """Sort key of the bank's listing: newest add first, one add's units in the text's order."""
    return (-p.payload.get("time", 0), p.payload.get("order", 0))


class BankError(ValueError):
    """A bank that cannot be opened or an input it refuses; the message says what to do."""


class BankBusyError(BankError):
    """The embedded store is open in another process (another kernel)."""


@dataclass
class Hit:
    """One retrieved RSU: its id, text, cosine similarity to the query, source and meta."""
    id: str
    text: str
    score: float
    source: str
    meta: dict = field(default_factory=dict)
    namespace: str = "default"
    time: float = 0.0
    uses: int = 0

    def __repr__(self):
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"Hit({self.score:.3f}, {self.source}, {text!r}, id={self.id[:8]})"


def default_path() -> Path:
    """Where the embedded bank lives unless a path is given."""
    if os.environ.get("RYZ_DATA_DIR"):
        return Path(os.environ["RYZ_DATA_DIR"]) / "recycle"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ryzjupyter" / "recycle"


def _collection(namespace: str) -> str:
    if not isinstance(namespace, str) or not namespace or len(namespace) > 120:
        raise BankError(f"namespace must be a non-empty string of at most 120 characters, got {namespace!r}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in namespace)
    return "rsu_" + safe


class RecycleBank:
    """A bank of recycled semantic units in Qdrant.

    Args:
        path: folder of the embedded store (default: the user's data directory, see default_path), or
            ``":memory:"`` for a bank kept in memory only (gone when it is closed).
        namespace: the collection this bank reads and writes (one per user or notebook).
        url: a Qdrant server (``http://host:6333``) instead of the embedded store.
        ttl: seconds an RSU lives after it was last added or used (None: forever); expired ones are
            removed when the bank opens and on every add.
        model: the embedder (None: all-MiniLM-L6-v2 on our kernels; see ryzjupyter.embed).
        max_items: the size cap: past it, the least recently used RSUs are removed (None: no cap).
        dedup: cosine at or above which a new RSU is merged into the nearest stored one (its uses
            and time are updated) instead of being stored again; None turns merging off.
        segment_threshold: similarity under which add() starts a new RSU (ryzjupyter.memory.segmentation).
        max_tokens: the most embedder tokens one RSU holds.
        api_key: for a server that wants one.
        timeout: seconds to wait for a server.
    """

    def __init__(self, path=None, namespace: str = "default", url: str | None = None, ttl: float | None = None,
                 model=None, max_items: int | None = None, dedup: float | None = 0.95,
                 segment_threshold: float = 0.35, max_tokens: int = 128, api_key: str | None = None,
                 timeout: float = 5.0):
        from qdrant_client import QdrantClient

        if ttl is not None and not (isinstance(ttl, (int, float)) and ttl > 0):
            raise BankError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if max_items is not None and not (isinstance(max_items, int) and max_items > 0):
            raise BankError(f"max_items must be a positive int or None, got {max_items!r}")
        if dedup is not None and not (0.0 < float(dedup) <= 1.0):
            raise BankError(f"dedup must be a cosine in (0, 1] or None, got {dedup!r}")
        self.namespace = namespace
        self.collection = _collection(namespace)
        self.ttl, self.max_items, self.dedup = ttl, max_items, dedup
        self.segment_threshold, self.max_tokens = segment_threshold, max_tokens
        self.encoder = get_encoder(model)
        self.model_name = self.encoder.name
        self.url = url
        self._lock = threading.RLock()
        self._closed = False
        self._listeners: list = []
        if url is not None:
            self.path = None
            self.client = QdrantClient(url=url, api_key=api_key, timeout=int(max(1, timeout)), check_compatibility=False)
            try:
                self.client.get_collections()
            except Exception as e:
                self.client.close()
                raise ConnectionError(f"cannot reach the Qdrant server at {url} ({type(e).__name__}: {e}); start it "
                                      "(docker run -p 6333:6333 qdrant/qdrant), check the URL, or leave url= "
                                      "out to use the embedded store") from None
        elif isinstance(path, str) and path == ":memory:":
            self.path = None                 # qdrant-client's local mode in memory: nothing is written
            self.client = QdrantClient(location=":memory:")
        else:
            self.path = Path(path).expanduser() if path is not None else default_path()
            self._check_folder(self.path)
            try:
                self.client = QdrantClient(path=str(self.path))
            except RuntimeError as e:
                if "already accessed" in str(e):
                    raise BankBusyError(f"the bank at {self.path} is already open (in another kernel, or another RecycleBank here); "
                                        "close it there (bank.close() or restart that kernel), open a different "
                                        "path=, or share one bank through a Qdrant server (url=)") from None
                raise
            marker = self.path / MARKER
            if not marker.exists():
                marker.write_text(json.dumps({"format": 1, "model": self.model_name, "dim": self.encoder.dim}))
        _OPEN.add(self)
        self._ensure_collection()
        self._mirror = self.url is None
        self._empty_mirror()
        if self._mirror:
            self._load_mirror()
        self.expire()

    # ---- opening ---------------------------------------------------------------------------
    @staticmethod
    def _check_folder(path: Path):
        if path.exists() and not path.is_dir():
            raise BankError(f"{path} is a file, not a bank folder; pass a folder path (it is created if missing)")
        if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists():
            raise BankError(f"{path} is not a RecycleBank folder (it has files but no {MARKER}); pass an empty or "
                            "new folder, or the folder of an existing bank")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BankError(f"cannot create the bank folder {path}: {e}") from None

    def _ensure_collection(self):
        from qdrant_client import models

        if self.client.collection_exists(self.collection):
            info = self.client.get_collection(self.collection)
            size = info.config.params.vectors.size
            if size != self.encoder.dim:
                raise BankError(f"namespace {self.namespace!r} holds {size}-dimensional vectors but the embedder "
                                f"{self.model_name} gives {self.encoder.dim}; use the model the bank was built with")
            if self.url is not None and "time" not in (info.payload_schema or {}):
                self._index_time()
            return
        self.client.create_collection(self.collection, vectors_config=models.VectorParams(
            size=self.encoder.dim, distance=models.Distance.COSINE))
        if self.url is not None:
            self._index_time()

    def _index_time(self):
        """A server orders a scroll by a payload key only with an index on it (newest() uses it);
        the embedded store needs none (it would warn that indexes have no effect there)."""
        from qdrant_client import models

        try:
            self.client.create_payload_index(self.collection, "time", field_schema=models.PayloadSchemaType.FLOAT,
                                             wait=True)
        except Exception:          # a read-only key: newest() then reads every unit instead
            pass

    def _scroll(self, with_vectors=False, flt=None):
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=True,
                                                with_vectors=with_vectors, scroll_filter=flt)
            yield from points
            if offset is None:
                return

    def _empty_mirror(self):
        """The in-memory copy of the namespace's vectors, empty: ids and their rows, the float32
        matrix, its int8 copy with the per-row scales, and the per-row norms of the int8 copy's
        rounding error and of the dequantized rows (the first pass's error bound, ``_top``)."""
        dim = self.encoder.dim
        self._ids, self._pos = [], {}
        self._vecs = np.empty((0, dim), np.float32)
        self._q8, self._s8 = np.empty((0, dim), np.int8), np.empty(0, np.float32)
        self._e8, self._h8 = np.empty(0, np.float32), np.empty(0, np.float32)

    def _load_mirror(self):
        ids, vecs = [], []
        for p in self._scroll(with_vectors=True):
            ids.append(str(p.id))
            vecs.append(np.asarray(p.vector, np.float32))
        self._empty_mirror()
        if vecs:
            self._mirror_put(ids, np.stack(vecs))

    def _mirror_put(self, ids, vecs):
        """Add or overwrite rows of the in-memory matrices (their capacity doubles as they grow)."""
        vecs = np.asarray(vecs, np.float32).reshape(len(ids), self.encoder.dim)
        if not len(ids):
            return
        q8, s8, e8, h8 = _quantize_rows(vecs)
        rows = np.empty(len(ids), np.int64)
        for j, i in enumerate(ids):
            n = self._pos.get(i)
            if n is None:
                n = len(self._ids)
                if n == len(self._vecs):
                    self._grow(max(64, 2 * n, n + len(ids) - j))
                self._pos[i] = n
                self._ids.append(i)
            rows[j] = n
        self._vecs[rows], self._q8[rows], self._s8[rows], self._e8[rows], self._h8[rows] = vecs, q8, s8, e8, h8

    def _grow(self, cap):
        n = len(self._ids)
        for name in ("_vecs", "_q8", "_s8", "_e8", "_h8"):
            old = getattr(self, name)
            grown = np.empty((cap,) + old.shape[1:], old.dtype)
            grown[:n] = old[:n]
            setattr(self, name, grown)

    def _mirror_drop(self, ids):
        drop = {self._pos[i] for i in ids if i in self._pos}
        if not drop:
            return
        keep = [n for n in range(len(self._ids)) if n not in drop]
        self._ids = [self._ids[n] for n in keep]
        self._vecs = np.ascontiguousarray(self._vecs[keep])
        self._q8 = np.ascontiguousarray(self._q8[keep])
        self._s8 = np.ascontiguousarray(self._s8[keep])
        self._e8 = np.ascontiguousarray(self._e8[keep])
        self._h8 = np.ascontiguousarray(self._h8[keep])
        self._pos = {i: n for n, i in enumerate(self._ids)}

    def subscribe(self, fn):
        """Call ``fn(event)`` after the stored units change (event: "add", "forget", "clear",
        "expire"); returns a function that unsubscribes. A listener's exception is ignored."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _changed(self, event):
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:
                pass

    @property
    def store(self) -> str:
        """Where the units are kept: the server's URL, the folder, or ":memory:"."""
        return self.url or (str(self.path) if self.path is not None else ":memory:")

    def _check_open(self):
        if self._closed:
            raise BankError("this bank is closed; open it again with RecycleBank(...)")

    # ---- writing ---------------------------------------------------------------------------
    def add(self, text: str, source: str = "text", meta: dict | None = None, segment_text: bool = True) -> list:
        """Cut ``text`` into RSUs, embed them and store them; returns their ids (an RSU that
        duplicates a stored one returns the stored one's id). ``source``: cell, reply, prompt,
        file or text; ``meta``: a JSON-serialisable dict kept with every RSU of this text."""
        self._check_open()
        if not isinstance(text, str):
            raise BankError(f"add() takes text (str), got {type(text).__name__}")
        if not text.strip():
            raise BankError("add() got an empty text; there is nothing to remember")
        if len(text) > MAX_TEXT_CHARS:
            raise BankError(f"add() got {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} one call takes; "
                            "add the text in parts (e.g. a file section by section)")
        if source not in SOURCES:
            raise BankError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        meta = dict(meta or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise BankError(f"meta must be JSON-serialisable ({e})") from None
        pieces = (segment(text, self.encoder, threshold=self.segment_threshold, max_tokens=self.max_tokens)
                  if segment_text else [text.strip()])
        pieces = [p for p in pieces if p.strip()]
        if not pieces:
            raise BankError("add() got a text with no words in it; there is nothing to remember")
        vecs = self.encoder.encode(pieces)
        with self._lock:
            self.expire()
            ids = self._upsert(pieces, vecs, source, meta)
        self._changed("add")
        return ids

    def _upsert(self, pieces, vecs, source, meta):
        from qdrant_client import models

        now = time.time()
        ids, points, merged = [], [], []
        for order, (text, v) in enumerate(zip(pieces, vecs)):
            dup = self._nearest(v) if self.dedup is not None else None
            if dup is not None and dup[1] >= self.dedup:
                merged.append(dup[0])
                ids.append(dup[0])
                continue
            pid = str(uuid.uuid4())
            payload = {"text": text, "source": source, "model": self.model_name, "namespace": self.namespace,
                       "time": now, "order": order, "last_used": now, "uses": 0, "meta": meta}
            points.append(models.PointStruct(id=pid, vector=v.tolist(), payload=payload))
            ids.append(pid)
            if self._mirror:
                self._mirror_put([pid], v[None])
        if points:
            self.client.upsert(self.collection, points=points, wait=True)
        if merged:                       # merged into stored units: they count as just used
            self.client.set_payload(self.collection, payload={"last_used": now}, points=sorted(set(merged)),
                                    wait=True)
        self._enforce_cap()
        return ids

    def _nearest(self, v):
        if self._mirror:
            if not self._ids:
                return None
            rows, s = self._top(v, 1)
            return self._ids[int(rows[0])], float(s[0])
        res = self.client.query_points(self.collection, query=v.tolist(), limit=1, with_payload=False).points
        return (str(res[0].id), float(res[0].score)) if res else None

    def _enforce_cap(self):
        if self.max_items is None:
            return
        n = self.count()
        if n <= self.max_items:
            return
        pts = sorted(self._scroll(), key=lambda p: (p.payload.get("last_used", 0), p.payload.get("time", 0)))
        self._delete([str(p.id) for p in pts[:n - self.max_items]])

    def _delete(self, ids):
        from qdrant_client import models

        if not ids:
            return
        self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)
        if self._mirror:
            self._mirror_drop(ids)

    def expire(self) -> int:
        """Remove the RSUs whose time-to-live is over; returns how many."""
        if self.ttl is None:
            return 0
        from qdrant_client import models

        cutoff = time.time() - self.ttl
        flt = models.Filter(must=[models.FieldCondition(key="last_used", range=models.Range(lt=cutoff))])
        with self._lock:
            old = [str(p.id) for p in self._scroll(flt=flt)]
            self._delete(old)
        if old:
            self._changed("expire")
        return len(old)

    def forget(self, ids) -> int:
        """Remove RSUs by id (one id or a list); returns how many were there."""
        self._check_open()
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        with self._lock:
            there = [str(p.id) for p in self.client.retrieve(self.collection, ids, with_payload=False)] if ids else []
            self._delete(there)
        if there:
            self._changed("forget")
        return len(there)

    def clear(self) -> int:
        """Remove every RSU of this namespace; returns how many there were."""
        self._check_open()
        with self._lock:
            n = self.count()
            self.client.delete_collection(self.collection)
            self._ensure_collection()
            self._empty_mirror()
        self._changed("clear")
        return n

    # ---- reading ---------------------------------------------------------------------------
    def _scores(self, q: np.ndarray, rows=None) -> np.ndarray:
        """Cosine of q (unit) with the mirrored vectors (unit; all, or those of ``rows``): one float32
        matrix product on our kernels."""
        w = self._vecs[:len(self._ids)] if rows is None else np.ascontiguousarray(self._vecs[rows])
        out = np.empty((1, len(w)), np.float32)
        limit = _native.set_thread_limit(1) if len(w) <= ONE_THREAD_ROWS else None
        try:
            _native.matmul_f32(out, np.ascontiguousarray(q[None], np.float32), w)
        finally:
            if limit is not None:
                _native.set_thread_limit(limit)
        return out[0]

    def _top(self, q: np.ndarray, k: int):
        """Rows and cosines of the k nearest mirrored vectors, best first (equal cosines: the lower
        row first), the same as scoring every row in float32 (``_scores``). Up to EXACT_ROWS rows
        that is what it does. Past that, two passes: an int8 pass over every row (matmul_i8, a
        quarter of the float matrix's bytes) gives each row an approximate cosine a and a bound e
        on its error (|q.v - a| <= |q| |v - v8| + |q - q8| |v8|, with v8, q8 the dequantized int8
        copies, plus SLACK for the float rounding). The k-th best lower bound a - e among some
        rows (the best of each block of BLOCK rows: a cheap argmax, not a partition of all n) is a
        bar no true top-k row can be under, so every row whose upper bound a + e reaches it gets
        its exact float32 cosine, and the top k of those is the exact top k. docs/memory.md: how many rows that is, and the latency."""
        n = len(self._ids)
        if n <= EXACT_ROWS:
            return self._best(np.arange(n), self._scores(q), k)
        q = np.asarray(q, np.float32)
        xq, xs, _, _ = _quantize_rows(q[None])
        approx = np.empty((1, n), np.float32)
        limit = _native.set_thread_limit(1) if n <= ONE_THREAD_ROWS else None
        try:
            _native.matmul_i8(approx, xq, xs, self._q8[:n], self._s8[:n])
        finally:
            if limit is not None:
                _native.set_thread_limit(limit)
        a = approx[0]
        qn = float(np.linalg.norm(q.astype(np.float64)))
        dq = float(np.linalg.norm(q.astype(np.float64) - xq[0].astype(np.float64) / float(xs[0])))
        e8, h8 = self._e8[:n], self._h8[:n]
        slack = SLACK * qn * (1.0 + float(h8.max()))
        nb = n // BLOCK
        if nb >= k:      # the best row of each block of BLOCK rows: the top k are nearly always among them
            pre = a[:nb * BLOCK].reshape(nb, BLOCK).argmax(axis=1) + np.arange(0, nb * BLOCK, BLOCK)
        else:
            pre = np.arange(n)
        lo = a[pre] - (qn * e8[pre] + dq * h8[pre] + slack)
        kk = min(k, len(pre))
        bar = float(np.partition(lo, len(lo) - kk)[len(lo) - kk])     # the k-th best lower bound
        widest = qn * float(e8.max()) + dq * float(h8.max()) + slack
        rows = np.flatnonzero(a >= bar - widest)                          # every row that may reach it
        rows = rows[a[rows] + (qn * e8[rows] + dq * h8[rows] + slack) >= bar]
        self.rescored = len(rows)                                          # for the bench
        return self._best(rows, self._scores(q, rows), k)

    @staticmethod
    def _best(rows: np.ndarray, s: np.ndarray, k: int):
        """The k best of rows by score s, best first; equal scores: the lower row first."""
        kk = min(k, len(rows))
        if kk < len(rows):
            cut = np.partition(s, len(s) - kk)[len(s) - kk]
            keep = np.flatnonzero(s >= cut)
            rows, s = rows[keep], s[keep]
        order = np.lexsort((rows, -s))[:kk]
        return rows[order], s[order]

    def search(self, query: str, k: int = 5, min_score: float | None = None, count_use: bool = True) -> list:
        """The k RSUs most similar to ``query`` (cosine, best first), as Hit objects. A hit's uses
        and last-used time are updated unless count_use=False."""
        self._check_open()
        if not isinstance(query, str):
            raise BankError(f"search() takes a query string, got {type(query).__name__}")
        if not isinstance(k, int) or k < 1:
            raise BankError(f"k must be a positive int, got {k!r}")
        q = self.encoder.encode([query])[0]
        return self.search_vector(q, k, min_score=min_score, count_use=count_use)

    def search_vector(self, q: np.ndarray, k: int = 5, min_score: float | None = None,
                      count_use: bool = True) -> list:
        """search() for an embedding already computed (unit float32 [dim])."""
        with self._lock:
            if self._mirror:
                if not self._ids:
                    return []
                rows, s = self._top(q, k)
                ids = [self._ids[int(n)] for n in rows]
                scores = [float(x) for x in s]
                recs = {str(r.id): r for r in self.client.retrieve(self.collection, ids, with_payload=True)}
                found = [(recs[i], sc) for i, sc in zip(ids, scores) if i in recs]
            else:
                res = self.client.query_points(self.collection, query=q.tolist(), limit=k, with_payload=True).points
                found = [(r, float(r.score)) for r in res]
            hits = [self._hit(r, sc) for r, sc in found if min_score is None or sc >= min_score]
            if count_use:
                self._count(hits)
            return hits

    def count_uses(self, ids) -> int:
        """Count one use of each RSU in ``ids`` (and set its last-used time, which the TTL and the
        size cap go by); returns how many were there. recycle= counts the units it put into a
        prompt this way, not every unit its search looked at. The new counts are one write
        (_count)."""
        self._check_open()
        ids = [ids] if isinstance(ids, str) else list(dict.fromkeys(str(i) for i in ids))   # each id once
        with self._lock:
            found = self.client.retrieve(self.collection, ids, with_payload=["uses"]) if ids else []
            self._count([Hit(id=str(r.id), text="", score=0.0, source="", uses=int((r.payload or {}).get("uses", 0)))
                         for r in found])
        return len(found)

    def _count(self, hits):
        """One more use for each hit (the uses the search already read: a hit shows them before
        this one), as one batch_update_points call: one request to a server; the embedded store
        applies the batch's updates in that one call (qdrant-client's local mode still commits
        each point to its SQLite file by itself, docs/memory.md)."""
        from qdrant_client import models

        if not hits:
            return
        now = time.time()
        uses: dict = {}
        for h in hits:                   # an id twice in one call: one use (as one set_payload each did)
            uses.setdefault(h.id, h.uses + 1)
        ops = [models.SetPayloadOperation(set_payload=models.SetPayload(payload={"last_used": now, "uses": n},
                                                                        points=[pid]))
               for pid, n in uses.items()]
        self.client.batch_update_points(self.collection, update_operations=ops, wait=True)

    def _hit(self, r, score) -> Hit:
        p = r.payload or {}
        return Hit(id=str(r.id), text=p.get("text", ""), score=score, source=p.get("source", ""),
                   meta=p.get("meta", {}), namespace=p.get("namespace", self.namespace), time=p.get("time", 0.0),
                   uses=int(p.get("uses", 0)))

    def list(self, limit: int | None = None) -> list:
        """The stored RSUs (newest add first; one add's RSUs in the text's order) as Hit objects with
        score 0. With a ``limit`` only the newest ``limit`` units are read (newest()); without one,
        every unit."""
        if limit is not None:
            return self.newest(limit)
        self._check_open()
        with self._lock:
            pts = sorted(self._scroll(), key=_newest_first)
        return [self._hit(p, 0.0) for p in pts]

    def newest(self, limit: int = 20) -> list:
        """The ``limit`` newest RSUs (what the sidebar shows), reading only those: a Qdrant scroll
        ordered by the stored time, newest first (the embedded store sorts the time values, not
        whole units; a server uses its index on ``time``). The units of one add share its time;
        the scroll reads ``limit + 64`` so that one add cut at the boundary is read whole, and
        reads twice as many again in the rare case a longer add is cut there."""
        from qdrant_client import models

        self._check_open()
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise BankError(f"limit must be a positive int, got {limit!r}")
        order = models.OrderBy(key="time", direction=models.Direction.DESC)
        want = limit + 64
        with self._lock:
            while True:
                try:
                    pts, _ = self.client.scroll(self.collection, limit=want, with_payload=True,
                                                with_vectors=False, order_by=order)
                except Exception:
                    if self.url is None:
                        raise
                    pts = sorted(self._scroll(), key=_newest_first)   # a server that has no index on time
                    break
                if len(pts) < want or len(pts) <= limit:
                    break              # every unit was read
                edge = pts[limit - 1].payload.get("time", 0)
                if pts[-1].payload.get("time", 0) != edge:
                    break              # the add at the boundary was read whole (a unit past it is older)
                want *= 2
        return [self._hit(p, 0.0) for p in sorted(pts, key=_newest_first)[:limit]]

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def stats(self) -> dict:
        """RSUs, namespaces, sources, uses, the store (path or URL), the model, ttl and cap."""
        self._check_open()
        with self._lock:
            pts = list(self._scroll())
            names = [c.name for c in self.client.get_collections().collections if c.name.startswith("rsu_")]
        sources: dict = {}
        for p in pts:
            sources[p.payload.get("source", "")] = sources.get(p.payload.get("source", ""), 0) + 1
        return {"namespace": self.namespace, "rsus": len(pts), "namespaces": len(names),
                "sources": sources, "uses": sum(int(p.payload.get("uses", 0)) for p in pts),
                "chars": sum(len(p.payload.get("text", "")) for p in pts),
                "store": self.store, "embedded": self.url is None, "model": self.model_name,
                "dim": self.encoder.dim, "ttl": self.ttl, "max_items": self.max_items, "dedup": self.dedup}

    # ---- closing ---------------------------------------------------------------------------
    def close(self):
        """Release the store (another process may open it afterwards)."""
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return self.count()

    def __repr__(self):
        return f"RecycleBank({self.store!r}, namespace={self.namespace!r}, {'closed' if self._closed else len(self)} RSUs)"
