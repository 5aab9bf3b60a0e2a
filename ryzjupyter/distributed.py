"""Scale-out on Dask: many prompts, texts or documents over the workers of a ``distributed`` cluster.

    from ryzjupyter.distributed import embed_many, generate_many, perplexity
    results = generate_many(prompts, model="demo", max_new_tokens=64, temperature=0)
    ppl = perplexity(["a.txt", "b.txt"], model="demo")
    vectors = embed_many(texts)                 # ryzjupyter.embed's rows, in order

``client``: a ``distributed.Client`` (any cluster: a ``LocalCluster``, dask-jobqueue,
dask-kubernetes, a scheduler address); None takes the client already made in this process
(``distributed.Client(...)`` makes itself the default), else the last :func:`local_client`
started here, else starts one: a ``LocalCluster`` of one single-threaded worker process per
physical core (:func:`local_cluster`).

How a run goes:

1. The model is loaded once per worker by a worker plugin (:class:`ModelPlugin`, registered under a
   name made from the model and its load options; registering it again does nothing). A worker that
   joins later, or one restarted after it died, loads it when it starts. A model that cannot load
   fails the call with the worker's error (the plugin is then removed), instead of a run that waits.
2. The prompts are cut into tasks of ``batch_size`` prompts. On the worker, a task submits its
   prompts to the model's :class:`~ryzjupyter.decoding.batching.Batcher`, which decodes them
   together (one ``forward_batch`` step for all the streams); tasks running at once on a worker of
   several threads share that batcher. Each prompt's tokens are those ``model.generate`` gives it
   alone (greedy, or sampled with its own seed).
3. Results come back as tasks finish and land at their prompt's index of ``out`` (a list the caller
   may pass in: what came back stays there if the run is interrupted or fails, and a second call
   with the same ``out`` runs only the prompts still missing). A progress bar counts them: a bar
   updated in place in a notebook, tqdm in a terminal.
4. A worker that dies mid-task loses nothing: the scheduler runs its tasks again on another worker,
   and each result is written once, from the one task that finished (a task's result is the list of
   its prompts' results, so a prompt is never half-written).

Per-prompt options: ``max_new_tokens``, ``ignore_eos`` and the sampling settings (temperature,
top_k, top_p, min_p, repetition_penalty, seed) may each be a list with one value per prompt, e.g.
``seed=list(range(len(prompts)))``; ``stop`` applies to every prompt.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import distributed
import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["generate_many", "perplexity", "embed_many", "ModelPlugin", "local_cluster", "local_client", "model_loads",
           "ModelLoadError"]

# the options of model.generate a prompt may have a value of its own for (lists, one per prompt)
PER_PROMPT = ("max_new_tokens", "ignore_eos", "temperature", "top_k", "top_p", "min_p",
              "repetition_penalty", "seed")


class ModelLoadError(RuntimeError):
    """The model could not be loaded on a worker (the message has the worker's error)."""


# ----------------------------------------------------------------------------
# the worker side: one model per (model, options) in each worker process

_LOCK = threading.Lock()
_MODELS: dict = {}                            # plugin name -> the loaded model
_BATCHERS: dict = {}                          # plugin name -> its Batcher
_LOADS: collections.Counter = collections.Counter()   # plugin name -> loads done in this process


def _plugin_name(model, options) -> str:
    spec = json.dumps([model, sorted(options.items())], default=str)
    return "ryzjupyter-model-" + hashlib.sha1(spec.encode()).hexdigest()[:12]


def _load_here(name, model, options):
    """Load the model in this worker process unless it is loaded (once: a lock, a counter)."""
    with _LOCK:
        if name not in _MODELS:
            from ryzjupyter.families.loading import load
            _MODELS[name] = load(model, **options)
            _LOADS[name] += 1
        return _MODELS[name]


def _batcher_here(name, model):
    with _LOCK:
        b = _BATCHERS.get(name)
        if b is None or b.closed:
            from ryzjupyter.decoding.batching import Batcher
            b = _BATCHERS[name] = Batcher(model, max_batch=16, max_queue=1 << 16, name=name)
        return b


def _loads_here() -> dict:
    return dict(_LOADS)


class ModelPlugin(WorkerPlugin):
    """Loads a model in every worker when the worker starts (or when the plugin is registered),
    once per worker process: ``ryzjupyter.load(model, **options)`` in a thread of the worker, so
    its event loop keeps answering the scheduler while a large model loads."""

    idempotent = True                          # registering the same model again does nothing

    def __init__(self, model=None, options=None):
        self.model = model
        self.options = dict(options or {})
        self.name = _plugin_name(model, self.options)

    async def setup(self, worker):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _load_here, self.name, self.model, self.options)

    def teardown(self, worker):
        with _LOCK:
            b = _BATCHERS.pop(self.name, None)
            _MODELS.pop(self.name, None)
        if b is not None:
            b.close()


def _generate_task(name, model, options, items, common):
    """On a worker: run (index, prompt, options) items through the model's batcher together."""
    m = _load_here(name, model, options)      # loaded by the plugin already; this only looks it up
    batcher = _batcher_here(name, m)
    handles = []
    try:
        for _, prompt, own in items:
            handles.append(batcher.submit(prompt, **common, **own))
        return [h.wait() for h in handles]
    except BaseException:
        for h in handles:
            h.cancel()
        raise


def _tokenize_task(name, model, options, text):
    from ryzjupyter.decoding.perplexity import text_ids
    m = _load_here(name, model, options)
    return [(text_ids(m, text), m.max_context)]


def _nll_task(name, model, options, wins):
    from ryzjupyter.decoding.perplexity import window_nll
    m = _load_here(name, model, options)
    nlls = []
    for w in wins:
        with m.forward_lock:                   # one window at a time between a batcher's steps
            nlls.append(window_nll(m, w))
    return nlls


# ----------------------------------------------------------------------------
# the client side

_LOCAL: dict = {}


def local_cluster(n_workers=None, threads=1, **kwargs):
    """A ``LocalCluster`` of ``n_workers`` worker processes (default: the physical cores), each with
    ``threads`` Dask threads and as many kernel threads (``RYZ_NUM_THREADS``); no dashboard (its
    HTTP server on a free port). ``kwargs`` go to ``LocalCluster``."""
    import psutil
    n = int(n_workers or psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    opts = dict(n_workers=n, threads_per_worker=threads, processes=True, dashboard_address=None,
                scheduler_kwargs={"dashboard_address": ":0"}, env={"RYZ_NUM_THREADS": str(threads)})
    return distributed.LocalCluster(**{**opts, **kwargs})


def local_client(n_workers=None, threads=1):
    """The client of the :func:`local_cluster` this process starts when no client is given (started
    on first use, reused, closed at exit)."""
    key = (n_workers, threads)
    c = _LOCAL.get(key)
    if c is None or c.status in ("closed", "closing"):
        c = _LOCAL[key] = distributed.Client(local_cluster(n_workers, threads), set_as_default=False)
    return c


def _client(client):
    if client is not None:
        return client
    try:
        return distributed.default_client()
    except ValueError:                         # no default client: a local one started here, or a new one
        live = [c for c in _LOCAL.values() if c.status == "running"]
        return live[-1] if live else local_client()


def _model_spec(model):
    """What the workers load: a loaded model becomes its folder; a local folder an absolute path."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        path = getattr(model, "path", None)
        if path is None:
            raise TypeError("model must be what ryzjupyter.load takes (a folder, a hub id, a bundled "
                            f"name or None), or a model loaded from a folder; got {type(model).__name__}")
        model = path
    if isinstance(model, (str, os.PathLike)):
        folder = Path(os.path.expanduser(model))
        if isinstance(model, os.PathLike) or (folder / "config.json").is_file():
            return str(folder.resolve())   # a model folder here: the same path on the workers
    return model


def _ensure_model(client, model, options) -> str:
    """Register the model's plugin (each worker loads the model once); a load error is raised here."""
    if not client.nthreads():
        raise RuntimeError("the Dask cluster has no workers; start some (or wait for them: "
                           "client.wait_for_workers(1)) before running on it")
    plugin = ModelPlugin(model, options)
    try:
        client.register_plugin(plugin)
    except Exception as e:                     # noqa: BLE001 - any worker error: say where and what
        try:
            client.unregister_worker_plugin(plugin.name)
        except Exception:                      # noqa: BLE001
            pass
        raise ModelLoadError(f"the model {model!r} failed to load on a Dask worker: {type(e).__name__}: {e} "
                             "(the model must be reachable from every worker: the same folder path on "
                             "each machine, or a hub id each can download; see docs/distributed.md)") from e
    return plugin.name


def _per_prompt(n, options) -> tuple[dict, list[dict]]:
    """Split options into those common to every prompt and per-prompt values (lists of n)."""
    from ryzjupyter.decoding.generation import _check_max_new_tokens, _split_stop
    from ryzjupyter.engine.sampling import SamplingSettings

    valid = set(PER_PROMPT) | {"stop", "add_special_tokens"}
    unknown = set(options) - valid
    if unknown:
        raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}; valid: "
                        f"{', '.join(sorted(valid))}")
    common, own = {}, [{} for _ in range(n)]
    for k, v in options.items():
        if k in PER_PROMPT and isinstance(v, (list, tuple)):
            if len(v) != n:
                raise ValueError(f"{k} has {len(v)} values for {n} prompts; give one value per prompt "
                                 "or a single value for all")
            for d, x in zip(own, v):
                d[k] = x
        else:
            common[k] = v
    _split_stop(common.get("stop"))
    sampling = set(SamplingSettings.__dataclass_fields__)
    checked = set()
    for d in own or [{}]:                     # the engine's own checks, before anything is sent
        opts = {**common, **d}
        sig = repr(sorted(opts.items()))
        if sig in checked:
            continue
        checked.add(sig)
        _check_max_new_tokens(opts.get("max_new_tokens", 128))
        SamplingSettings(**{k: v for k, v in opts.items() if k in sampling}).validate()
    return common, own


def _check_prompt(i, p):
    if isinstance(p, str):
        return p
    if isinstance(p, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return list(p)
    if hasattr(p, "tolist"):
        return _check_prompt(i, p.tolist())
    raise TypeError(f"prompt {i} must be a string or a list of token ids, got {type(p).__name__}")


def _chunks(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def _batch_size(client, n, batch_size):
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return batch_size
    threads = sum(client.nthreads().values()) or 1
    # enough tasks to keep every thread busy to the end (about 4 per thread), at most 16 prompts each
    return max(1, min(16, math.ceil(n / (4 * threads))))


def _run(client, tasks, out, progress, desc, unit, weight=None):
    """Submit tasks [(function, args, indices)], write each result at its indices of out as tasks
    finish, show progress; on an error or an interrupt cancel what is left and re-raise (out keeps
    what came back)."""
    total = len(out)
    done = sum(1 for x in out if x is not None)
    bar = _Progress(progress, total, desc, unit, done)
    futures = {}
    token = uuid.uuid4().hex[:8]
    for j, (fn, args, idx) in enumerate(tasks):
        f = client.submit(fn, *args, key=f"ryz-{desc.replace(' ', '-')}-{token}-{j}", pure=False)
        futures[f.key] = (f, idx)
    ok = False
    try:
        for f in distributed.as_completed([f for f, _ in futures.values()], loop=client.loop):
            res = f.result()
            idx = futures[f.key][1]
            for i, r in zip(idx, res):
                out[i] = r
            done += len(idx)
            bar.update(done, sum(weight(r) for r in res) if weight else 0)
        ok = True
    except BaseException as e:
        client.cancel([f for f, _ in futures.values() if not f.done()])
        got = sum(1 for x in out if x is not None)
        if hasattr(e, "add_note"):
            e.add_note(f"{got} of {total} results came back and are kept in `out`; run again with the "
                       "same `out` to compute only the missing ones")
        raise
    finally:
        bar.close(ok)
    return out


def generate_many(prompts, model=None, client=None, *, batch_size=None, out=None, progress=True,
                  load_options=None, **options):
    """Generate a continuation of every prompt on a Dask cluster; the ``GenerationResult``s in prompt order.

    Args:
        prompts: strings or lists of token ids.
        model: what ``ryzjupyter.load`` takes (a folder, a hub id, a bundled name, None for the
            demo model), or a model loaded from a folder; every worker loads it once.
        client: a ``distributed.Client``; None: this process's default client, else the last
            :func:`local_client` started here, else a new one.
        batch_size: prompts per task, decoded together on a worker (default: about four tasks
            per worker thread, at most 16 prompts each).
        out: a list of ``len(prompts)`` to fill (None entries are computed, others kept); results
            land in it as they arrive, so an interrupted run keeps what came back.
        progress: True (a bar in the notebook or the terminal), False, or ``callable(done, total)``.
        load_options: keywords for ``ryzjupyter.load`` on the workers (``lm_head``, ``max_context``...).
        **options: ``model.generate``'s options (max_new_tokens, stop, ignore_eos, temperature,
            top_k, top_p, min_p, repetition_penalty, seed); all but stop may be per-prompt lists.

    Returns:
        ``out``: a list with the ``GenerationResult`` of prompt i at index i.
    """
    prompts = [_check_prompt(i, p) for i, p in enumerate(prompts)]
    n = len(prompts)
    out = [None] * n if out is None else out
    if len(out) != n:
        raise ValueError(f"out has {len(out)} entries for {n} prompts")
    common, own = _per_prompt(n, options)
    todo = [i for i in range(n) if out[i] is None]
    if not todo:
        return out
    client = _client(client)
    spec, load_options = _model_spec(model), dict(load_options or {})
    name = _ensure_model(client, spec, load_options)
    size = _batch_size(client, len(todo), batch_size)
    tasks = [(_generate_task, (name, spec, load_options, [(i, prompts[i], own[i]) for i in idx], common), idx)
             for idx in _chunks(todo, size)]
    return _run(client, tasks, out, progress, "generate", "prompt",
                weight=lambda r: r.stats.n_generated)


def _read_text(i, x) -> tuple[str, str]:
    maybe_path = isinstance(x, os.PathLike) or (isinstance(x, str) and "\n" not in x and len(x) < 4096)
    p = Path(os.path.expanduser(x)) if maybe_path else None
    if isinstance(x, os.PathLike) or (p is not None and p.is_file()):
        try:
            return p.read_text(encoding="utf-8"), str(p)
        except OSError as e:
            raise ValueError(f"cannot read item {i}, {p}: {e}") from None
    if isinstance(x, str):
        return x, f"text {i}"
    raise TypeError(f"item {i} must be a text or a file path, got {type(x).__name__}")


def perplexity(files_or_texts, model=None, client=None, *, n_ctx=None, batch_size=None, progress=True,
               load_options=None) -> list[dict]:
    """The perplexity of each text (or file, read here) on a Dask cluster, in order.

    Each text is cut into windows of ``n_ctx`` tokens (default: the model's context) exactly as
    ``python -m ryzjupyter.bench ppl`` does (ryzjupyter/decoding/perplexity.py); the windows of all
    the texts are spread over the workers, ``batch_size`` per task. Returns one dict per item:
    ``ppl``, ``nll_sum``, ``predicted_tokens``, ``tokens``, ``windows``, ``n_ctx`` and ``source``
    (the file path, or "text i"). For the whole corpus: ``exp(sum(nll_sum) / sum(predicted_tokens))``.
    """
    from ryzjupyter.decoding.perplexity import summary, windows

    texts = [_read_text(i, x) for i, x in enumerate(files_or_texts)]
    if not texts:
        return []
    client = _client(client)
    spec, load_options = _model_spec(model), dict(load_options or {})
    name = _ensure_model(client, spec, load_options)
    tok = _run(client, [(_tokenize_task, (name, spec, load_options, t), [i]) for i, (t, _) in enumerate(texts)],
               [None] * len(texts), False, "tokenize", "text")
    ctx = int(n_ctx or tok[0][1])
    per_text = []
    flat = []                                   # (text index, window)
    for i, (ids, _) in enumerate(tok):
        wins = windows(ids, ctx)
        if not wins:
            raise ValueError(f"{texts[i][1]} is too short: it needs at least 2 tokens")
        per_text.append(wins)
        flat += [(i, w) for w in wins]
    size = _batch_size(client, len(flat), batch_size)
    order = list(range(len(flat)))
    tasks = [(_nll_task, (name, spec, load_options, [flat[k][1] for k in idx]), idx) for idx in _chunks(order, size)]
    nll = _run(client, tasks, [None] * len(flat), progress, "perplexity", "window")
    results, k = [], 0
    for i, wins in enumerate(per_text):
        res = summary(nll[k:k + len(wins)], wins, len(tok[i][0]), ctx)
        k += len(wins)
        results.append({**res, "source": texts[i][1]})
    return results


def _encoder_name(model) -> str:
    return "ryzjupyter-encoder-" + hashlib.sha1(json.dumps(model).encode()).hexdigest()[:12]


def _embed_task(name, model, texts):
    """On a worker: the embeddings of a chunk of texts (the encoder loaded once per process)."""
    from ryzjupyter.memory.embedding import embed, get_encoder
    with _LOCK:
        if name not in _MODELS:
            _MODELS[name] = get_encoder(model)
            _LOADS[name] += 1
        enc = _MODELS[name]
    return list(embed(texts, model=enc))


def embed_many(texts, model=None, client=None, *, batch_size=None, out=None, progress=True) -> np.ndarray:
    """The embeddings of many texts on a Dask cluster: ``ryzjupyter.embed`` on the workers, rows in order.

    Args:
        texts: strings (the empty string is allowed; long texts are truncated as ``embed`` does).
        model: what ``ryzjupyter.embed`` takes (None: all-MiniLM-L6-v2, a local folder, a hub id);
            every worker loads it once (counted in :func:`model_loads`).
        client: as for :func:`generate_many`.
        progress: as for :func:`generate_many` (the bar counts texts).
        batch_size: texts per task (default: about four tasks per worker thread, at most 256 each).
        out: a list of ``len(texts)`` to fill (None entries are computed, others kept), so an
            interrupted run keeps the rows that came back.

    Returns:
        float32 array of shape (len(texts), dim), each row of unit L2 norm.
    """
    if isinstance(texts, str):
        raise TypeError("embed_many() takes a list of texts; for one text use ryzjupyter.embed(text)")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"embed_many(): texts[{i}] is {type(t).__name__}, not str")
    n = len(texts)
    out = [None] * n if out is None else out
    if len(out) != n:
        raise ValueError(f"out has {len(out)} entries for {n} texts")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError("model must be what ryzjupyter.embed takes as a name: None, a folder or a hub id")
    folder = Path(os.path.expanduser(model)) if model is not None else None
    if folder is not None and folder.is_dir():
        model = str(folder.resolve())   # a folder here: the same path on the workers
    todo = [i for i in range(n) if out[i] is None]
    if todo:
        client = _client(client)
        if not client.nthreads():
            raise RuntimeError("the Dask cluster has no workers; start some (or wait for them: "
                               "client.wait_for_workers(1)) before running on it")
        name = _encoder_name(model)
        size = batch_size if batch_size is not None else \
            max(1, min(256, math.ceil(len(todo) / (4 * (sum(client.nthreads().values()) or 1)))))
        size = _batch_size(client, len(todo), size)
        tasks = [(_embed_task, (name, model, [texts[i] for i in idx]), idx) for idx in _chunks(todo, size)]
        _run(client, tasks, out, progress, "embed", "text")
    if not n:
        from ryzjupyter.memory.embedding import get_encoder
        return np.empty((0, get_encoder(model).dim), np.float32)
    return np.stack(out).astype(np.float32, copy=False)


def model_loads(client=None) -> dict:
    """How many times each worker process loaded each model: {worker address: {plugin name: count}}."""
    return _client(client).run(_loads_here)


# ----------------------------------------------------------------------------
# progress: a bar updated in place in a notebook, tqdm in a terminal

def _in_notebook() -> bool:
    ip = sys.modules.get("IPython")
    shell = ip.get_ipython() if ip is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class _Progress:
    """done/total with the tokens so far. In a notebook: one display updated a few times a second
    (with RYZ_STREAM=0, as the %%ryz replies, only the final state is shown); in a terminal: tqdm."""

    def __init__(self, progress, total, desc, unit, done=0):
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.tokens = done, 0
        self.t0 = time.perf_counter()
        self.callback = progress if callable(progress) else None
        self.bar = self.handle = None
        self.last = 0.0
        self.notebook = bool(progress) and self.callback is None and _in_notebook()
        self.live = self.notebook and os.environ.get("RYZ_STREAM", "1") != "0"
        if progress is True and not self.notebook:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, file=sys.stderr,
                            dynamic_ncols=True)
        if self.live:
            self._show()

    def update(self, done, tokens=0):
        step = done - self.done
        self.done = done
        self.tokens += tokens
        if self.callback is not None:
            self.callback(done, self.total)
        if self.bar is not None:
            self.bar.update(step)
        if self.live and (time.perf_counter() - self.last > 0.2 or done == self.total):
            self._show()

    def _text(self, final=False):
        width = 30
        fill = int(width * self.done / self.total) if self.total else width
        text = f"{self.desc}: [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {self.unit}s"
        if final:
            dt = time.perf_counter() - self.t0
            text += f" in {dt:.2f} s"
            if self.tokens:
                text += f", {self.tokens} tokens ({self.tokens / dt:.1f} tok/s)"
        return text

    def _show(self, final=False):
        from IPython.display import display
        text = self._text(final)
        pct = self.done / self.total if self.total else 1.0
        html = (f'<div style="font-family:monospace"><progress value="{self.done}" max="{self.total or 1}" '
                f'style="width:24em"></progress> {text.split("] ", 1)[1]} ({pct:.0%})</div>')
        bundle = {"text/plain": text, "text/html": html}
        self.last = time.perf_counter()
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def close(self, ok=True):
        if self.bar is not None:
            self.bar.close()
        if self.notebook:
            self._show(final=ok)
