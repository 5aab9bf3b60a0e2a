"""The server's side of the engine: the model manager's loaded models, one continuous batcher per
model, and the traffic counters the sidebar and the bench read.

A request names a model as the manager names it (``demo`` for the bundled model). The first
request for a model starts its Batcher (ryzjupyter.decoding.batching); while the batcher has work
the model is marked as generating in the manager (it cannot be unloaded meanwhile, the sidebar
shows live tokens/s and its stop button cancels the server's generations). A model unloaded or
reloaded in the manager gets its batcher closed or replaced.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import types

from ryzjupyter.decoding.batching import Batcher

from .protocol import APIError


class _Stopper:
    """The manager's view of a batcher while it works: stop() cancels every stream, and the
    generation the manager reports as the last one is the request that ended last."""

    def __init__(self, batcher):
        self.batcher = batcher
        self.session = types.SimpleNamespace(model=batcher.model, max_context=batcher.model.max_context)

    @property
    def result(self):
        return self.batcher.last_result

    def request_stop(self):
        self.batcher.cancel_all()


class Traffic:
    """HTTP-level counters (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = 0                    # requests answered or running
        self.in_flight = 0
        self.by_status: collections.Counter = collections.Counter()
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.cancelled = 0                   # generations ended because the client went away
        self._ttft = collections.deque(maxlen=2048)   # seconds, most recent last

    def begin(self):
        with self._lock:
            self.requests += 1
            self.in_flight += 1

    def end(self, status):
        with self._lock:
            self.in_flight -= 1
            self.by_status[int(status)] += 1

    def add(self, *, prompt=0, completion=0, ttft=None, cancelled=0):
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.cancelled += cancelled
            if ttft is not None:
                self._ttft.append(float(ttft))

    def ttft_percentiles(self) -> dict:
        with self._lock:
            xs = sorted(self._ttft)
        if not xs:
            return {"ttft_p50_s": None, "ttft_p99_s": None}
        pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]   # noqa: E731 - nearest rank
        return {"ttft_p50_s": pick(0.50), "ttft_p99_s": pick(0.99)}

    def snapshot(self) -> dict:
        with self._lock:
            d = {"requests": self.requests, "in_flight": self.in_flight,
                 "errors": sum(n for s, n in self.by_status.items() if s >= 400),
                 "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                 "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                 "cancelled": self.cancelled}
        d.update(self.ttft_percentiles())
        return d


class Backend:
    def __init__(self, manager, settings, on_change=None):
        self.manager, self.settings = manager, settings
        self.traffic = Traffic()
        self.on_change = on_change          # called (rate-limited) when traffic or streams change
        self._lock = threading.Lock()
        self._batchers: dict[str, Batcher] = {}
        self._busy: dict[str, tuple] = {}    # name -> (ExitStack, manager Generation, tokens at start)
        self._last_push = 0.0
        self._created = int(time.time())
        self._unsubscribe = manager.subscribe(self._on_manager_event)

    # -- models
    def model_names(self) -> list[str]:
        return [n for n in self.manager.names() if _serves_text(self.manager.get(n))]

    def batcher(self, name):
        """(name, model, batcher) for a served model, or APIError 404. Starting a batcher may
        repack the model's weights once: call it off the event loop."""
        found = self.manager.find(name)
        model = self.manager.get(found) if found is not None else None
        if model is None or not _serves_text(model):
            served = ", ".join(self.model_names()) or "none (load one first)"
            raise APIError(404, f"The model '{name}' does not exist or is not loaded in this server; served "
                           f"models: {served}", param="model", code="model_not_found")
        with self._lock:
            b = self._batchers.get(found)
            if b is not None and (b.model is not model or b.closed):
                b.close(timeout=0)
                b = None
            if b is None:
                s = self.settings
                b = Batcher(model, max_batch=s.max_batch, max_queue=s.max_queue, name=found,
                            on_activity=self._on_activity, on_step=self._on_step)
                self._batchers[found] = b
        return found, model, b

    def warm(self):
        """Start the batchers of every loaded model now (their one-time weight repacking, if any,
        happens before the first request instead of during it)."""
        for name in self.model_names():
            try:
                self.batcher(name)
            except APIError:
                pass

    def close(self):
        self._unsubscribe()
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for b in batchers:
            b.close()

    # -- engine callbacks (on a batcher's thread)
    def _on_activity(self, busy, batcher):
        name = batcher.name
        if busy:
            stack = contextlib.ExitStack()
            try:
                gen = stack.enter_context(self.manager.generating(name))
                gen.stream = _Stopper(batcher)
            except Exception:               # noqa: BLE001 - e.g. the model was just unloaded
                stack.close()
                return
            with self._lock:
                old = self._busy.pop(name, None)
                self._busy[name] = (stack, gen, batcher.tokens)
            if old is not None:
                old[0].close()
        else:
            with self._lock:
                entry = self._busy.pop(name, None)
            if entry is not None:
                entry[0].close()
        self.changed(force=True)

    def _on_step(self, batcher):
        with self._lock:
            entry = self._busy.get(batcher.name)
        if entry is not None:                   # live tokens of this busy period, for the sidebar
            entry[1].tick(n_tokens=batcher.tokens - entry[2])
        self.changed()

    def _on_manager_event(self, event):
        if event.get("event") not in ("changed", "unloaded"):
            return
        names = set(self.manager.names())
        with self._lock:
            gone = [n for n, b in self._batchers.items() if n not in names or self.manager.get(n) is not b.model]
            closing = [self._batchers.pop(n) for n in gone]
        for b in closing:
            b.close(timeout=0)

    def changed(self, force=False):
        """Tell on_change, at most 4 times a second unless forced."""
        now = time.monotonic()
        if not force and now - self._last_push < 0.25:
            return
        self._last_push = now
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:               # noqa: BLE001
                pass

    # -- status
    def snapshot(self) -> dict:
        with self._lock:
            batchers = list(self._batchers.values())
        per_model = [b.stats() for b in batchers]
        d = self.traffic.snapshot()
        d["models"] = self.model_names()
        d["engines"] = per_model
        d["streams"] = sum(s["active"] for s in per_model)
        d["queued"] = sum(s["queued"] for s in per_model)
        d["tok_s"] = sum(s["tok_s"] for s in per_model if s["active"])
        return d


def _serves_text(model) -> bool:
    return model is not None and callable(getattr(model, "forward", None)) and hasattr(model, "max_context")

