"""Continuous batching: many generations on one model, decoded together.

    batcher = Batcher(model, max_batch=16)
    s = batcher.submit("Once upon a time", 64, temperature=0)     # from any thread
    for piece in s:                                                # blocks for each piece
        print(piece, end="")
    s.result                                                       # a GenerationResult
    batcher.close()

`submit` takes the options of ``model.generate`` (max_new_tokens, stop, ignore_eos, temperature,
top_k, top_p, min_p, repetition_penalty, seed) and returns a :class:`BatchStream` at once; the
text arrives through iteration or the ``on_piece`` / ``on_done`` callbacks (called on the engine
thread). ``cancel()`` ends a stream before the next step.

One engine thread per batcher runs the loop, each iteration:

1. admit queued requests while fewer than ``max_batch`` streams are in flight;
2. one prefill chunk (``model.state.chunk`` tokens, the chunk ``forward`` itself uses) of the
   oldest stream still reading its prompt, so streams that are decoding wait one chunk at most;
3. one decode step for every decoding stream: ``model.forward_batch(tokens, caches)`` (BitNet:
   each linear one GEMM over the streams' tokens, attention per stream over its own cache), then
   each stream samples with its own sampler (settings and seed), applies its stop rules and
   emits its text;
4. finished and cancelled streams leave (their KV caches are dropped); newcomers join.

Every stream has a KV cache, position, sampler and stop rules of its own. Its tokens are those
``model.generate`` gives it alone: the prompt runs through ``forward`` in the same chunks,
``forward_batch`` row m is bitwise ``forward`` of that stream's token, and the sampler draws from
its own seeded generator (tests/serve/test_batcher.py checks greedy and seeded outputs under load).
Each forward pass holds ``model.forward_lock``, so a notebook cell on the same model takes turns
with the batcher token by token.
"""

from __future__ import annotations

import collections
import queue
import threading
import time

import numpy as np

from ryzjupyter.decoding.generation import (GenerationResult, GenerationStats, _check_max_new_tokens,
                                            _held_suffix, _split_stop)
from ryzjupyter.engine.sampling import Sampler, SamplingSettings

__all__ = ["Batcher", "BatchStream", "BatcherClosed", "BatcherFull"]

_DONE = object()   # end-of-stream marker in a BatchStream's queue


class BatcherClosed(RuntimeError):
    """The batcher was closed: it takes no more requests."""


class BatcherFull(RuntimeError):
    """max_queue requests are already waiting; try again later."""


class BatchStream:
    """One generation in a Batcher: iterate it for text pieces (blocking), or pass on_piece /
    on_done to submit. ``result`` holds the GenerationResult once ``done`` is set; ``error`` the
    exception if the engine failed while running it."""

    def __init__(self, prompt_ids, settings, on_piece=None, on_done=None):
        self.prompt_ids = list(prompt_ids)
        self.settings = settings
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.submitted = time.perf_counter()
        self._on_piece, self._on_done = on_piece, on_done
        self._pieces: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = False

    def cancel(self):
        """End this generation at the next step (finish_reason 'interrupted', partial text kept)."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __iter__(self):
        return self

    def __next__(self) -> str:
        item = self._pieces.get()
        if item is _DONE:
            self._pieces.put(_DONE)           # further next() calls end too
            if self.error is not None:
                raise self.error
            raise StopIteration
        return item

    def wait(self, timeout=None) -> GenerationResult:
        """Block until the generation ends; returns the result (raises the engine's error)."""
        if not self.done.wait(timeout):
            raise TimeoutError("the generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self.result

    # called by the engine thread
    def _emit(self, piece):
        self._pieces.put(piece)
        if self._on_piece is not None:
            try:
                self._on_piece(piece)
            except Exception:                 # noqa: BLE001 - a broken consumer must not stop the engine
                pass

    def _finish(self, result=None, error=None):
        self.result, self.error = result, error
        self.done.set()
        self._pieces.put(_DONE)
        if self._on_done is not None:
            try:
                self._on_done(self)
            except Exception:                 # noqa: BLE001
                pass


class _Stream:
    """The engine thread's state of one BatchStream (TextStream's loop, one token at a time)."""

    def __init__(self, model, handle: BatchStream, max_new_tokens, stop_strings, stop_ids, sampler):
        self.h = handle
        self.max_new = max_new_tokens
        self.stop_strings, self.stop_ids = stop_strings, stop_ids
        self.sampler = sampler
        self.ids = handle.prompt_ids
        tok = model.tokenizer
        self.decoder = tok.decoder(context_ids=self.ids) if tok is not None else None
        self.max_context = model.max_context
        self.cache = None                       # allocated when admitted
        self.prefilled = 0                      # prompt tokens run so far
        self.next_token = None                  # sampled, not yet run (the next decode step runs it)
        self.ctx = list(self.ids)
        self.out: list[int] = []
        self.text: list[str] = []
        self.pending = ""
        self.finish = None
        self.stats = GenerationStats(n_prompt=len(self.ids))
        self.t_first = None

    def advance(self, logits) -> None:
        """Sample from `logits`, apply the stop rules, emit text (TextStream._run's step)."""
        t = self.sampler.sample(logits, self.ctx)
        self.out.append(t)
        self.ctx.append(t)
        if self.t_first is None:
            self.t_first = time.perf_counter()
        if t in self.stop_ids:
            self.end("stop")
            return
        if self.decoder is not None:
            self.pending += self.decoder.push(t)
        hold = 0
        if self.stop_strings and self.pending:
            hit = min(((self.pending.find(s), s) for s in self.stop_strings if s in self.pending), default=None)
            if hit is not None:
                self.pending = self.pending[:hit[0]]
                self.end("stop")
                return
            hold = _held_suffix(self.pending, self.stop_strings)
        if len(self.pending) > hold:
            piece, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
            self.text.append(piece)
            self.h._emit(piece)
        if len(self.out) >= self.max_new:
            self.end("length")
        elif len(self.cache.tokens) + 1 > self.max_context:
            self.end("context")
        else:
            self.next_token = t

    def end(self, finish, error=None):
        if self.finish is not None:
            return
        self.finish = finish
        interrupted = finish == "interrupted"
        if error is None:
            if finish != "stop" and self.decoder is not None:
                self.pending += self.decoder.flush()
            if self.pending:
                self.text.append(self.pending)
                if not interrupted:
                    self.h._emit(self.pending)
        end = time.perf_counter()
        s = self.stats
        s.n_generated = len(self.out)
        s.total_s = end - self.h.submitted
        if self.t_first is not None:
            s.ttft_s = self.t_first - self.h.submitted
            s.decode_s = end - self.t_first
        if s.prefill_s > 0:
            s.prefill_tok_s = s.n_prefill / s.prefill_s
        if s.decode_s > 0 and len(self.out) > 1:
            s.decode_tok_s = (len(self.out) - 1) / s.decode_s
        result = GenerationResult("".join(self.text), self.out, s, self.h.settings, finish, list(self.ids))
        self.cache = None                       # the KV cache goes now, not when the handle does
        self.h._finish(result, error)


class Batcher:
    """Continuous batching of generations on one model (see the module docstring).

    max_batch: streams in flight at once (decoding or reading their prompt); max_queue: requests
    waiting beyond them before submit raises BatcherFull; prefill_chunk: prompt tokens per prefill
    step (default: the chunk the model's forward uses, so prompts run exactly as alone);
    on_activity(busy: bool, batcher): called on the engine thread when work starts and when it
    runs out; on_step(batcher): after every step (live statistics)."""

    def __init__(self, model, *, max_batch=16, max_queue=256, prefill_chunk=None, name=None,
                 on_activity=None, on_step=None):
        for key, v in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        if prefill_chunk is None:
            prefill_chunk = getattr(getattr(model, "state", None), "chunk", 64)
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive integer, got {prefill_chunk!r}")
        self.model = model
        self.name = name or getattr(model, "name", "model")
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.on_activity, self.on_step = on_activity, on_step
        prepare = getattr(model, "prepare_batching", None)
        self.batched = False
        if callable(prepare):
            with model.forward_lock:            # it may repack weights a notebook cell is using
                self.batched = bool(prepare())
        self._cv = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._active: list[_Stream] = []
        self._closed = False
        self._busy = False
        # counters (read by stats() from any thread)
        self.requests = 0
        self.finished = 0
        self.tokens = 0
        self.steps = 0
        self.batched_tokens = 0                 # tokens produced by decode steps of more than one stream
        self.last_result: GenerationResult | None = None   # of the generation that ended last
        self._recent = collections.deque(maxlen=64)   # (time, tokens) of recent decode steps
        self._thread = threading.Thread(target=self._loop, name=f"ryz-batcher-{self.name}", daemon=True)
        self._thread.start()

    # -- requests
    def submit(self, prompt, max_new_tokens=128, *, stop=None, ignore_eos=False, add_special_tokens=True,
               on_piece=None, on_done=None, **sampling) -> BatchStream:
        """Queue a generation (prompt: text or token ids). Bad options raise here (ValueError /
        TypeError), as they do for model.generate; BatcherFull when max_queue are waiting."""
        unknown = set(sampling) - set(SamplingSettings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}; valid: "
                            f"max_new_tokens, stop, ignore_eos, {', '.join(SamplingSettings.__dataclass_fields__)}")
        model = self.model
        max_new = _check_max_new_tokens(max_new_tokens)
        stop_strings, stop_ids = _split_stop(stop)
        stop_ids = set(stop_ids)
        tok = model.tokenizer
        if not ignore_eos and tok is not None:
            stop_ids |= set(tok.stop_token_ids)
        sampler = Sampler(SamplingSettings(**sampling))
        ids = _prompt_ids(model, prompt, add_special_tokens)
        if not ids:
            raise ValueError("the prompt is empty; give at least one token (most models want a BOS token)")
        if len(ids) > model.max_context:
            raise ValueError(f"the prompt has {len(ids)} tokens but the context holds {model.max_context}; "
                             "shorten the prompt")
        bad = [t for t in ids if not 0 <= t < model.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{model.vocab_size - 1})")
        settings = sampler.settings.as_dict()
        settings.update(max_new_tokens=max_new, stop=stop_strings + sorted(stop_ids))
        handle = BatchStream(ids, settings, on_piece, on_done)
        stream = _Stream(model, handle, max_new, stop_strings, stop_ids, sampler)
        with self._cv:
            if self._closed:
                raise BatcherClosed(f"the batcher of {self.name} is closed")
            # a request cancelled while it waited holds no place: the engine thread may be inside a
            # long step and not have dropped it yet (a server request refused as a whole cancels
            # the generations it had queued, and the next request must find their places free)
            dropped = [q for q in self._queue if q.h.cancelled]
            if dropped:
                live = [q for q in self._queue if not q.h.cancelled]
                self._queue.clear()
                self._queue.extend(live)
                self.finished += len(dropped)
            full = len(self._queue) >= self.max_queue
            if not full:
                self._queue.append(stream)
                self.requests += 1
                self._cv.notify()
        for q in dropped:
            q.end("interrupted")
        if full:
            raise BatcherFull(f"{len(self._queue)} requests are already waiting for {self.name}; try again later")
        return handle

    def cancel_all(self) -> int:
        """Cancel every queued and running generation; returns how many."""
        with self._cv:
            streams = list(self._queue) + list(self._active)
            self._cv.notify()
        for s in streams:
            s.h.cancel()
        return len(streams)

    def close(self, timeout=10.0):
        """Cancel everything, stop the engine thread, refuse new requests."""
        with self._cv:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify()
        for s in pending:
            s.end("interrupted")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict:
        """Live counters: streams in flight / decoding / reading prompts, queued requests, totals,
        and the decode rate of recent steps (tokens/s over the last ~64 steps)."""
        with self._cv:
            active = list(self._active)
            queued = len(self._queue)
            recent = list(self._recent)
        rate = 0.0
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            rate = sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0])
        return {"model": self.name, "active": len(active),
                "decoding": sum(1 for s in active if s.prefilled >= len(s.ids)),
                "prefilling": sum(1 for s in active if s.prefilled < len(s.ids)), "queued": queued,
                "requests": self.requests, "finished": self.finished, "tokens": self.tokens,
                "steps": self.steps, "tok_s": rate, "batched": self.batched, "max_batch": self.max_batch}

    # -- the engine thread
    def _loop(self):
        while True:
            with self._cv:
                while not self._closed and not self._queue and not self._active:
                    if self._busy:
                        self._busy = False
                        self._cv.release()
                        try:
                            self._activity(False)
                        finally:
                            self._cv.acquire()
                        continue
                    self._cv.wait()
                if self._closed:
                    active, self._active = self._active, []
                    break
                while self._queue and len(self._active) < self.max_batch:
                    s = self._queue.popleft()
                    self._active.append(s)
                start = not self._busy
                self._busy = True
            if start:
                self._activity(True)
            try:
                self._step()
            except Exception as e:            # noqa: BLE001 - the engine thread must live on
                for s in list(self._active):
                    s.end("error", error=e)
            with self._cv:
                done = [s for s in self._active if s.finish is not None]
                self._active = [s for s in self._active if s.finish is None]
                self.finished += len(done)
            if done:
                self.last_result = done[-1].h.result
            if self.on_step is not None:
                try:
                    self.on_step(self)
                except Exception:             # noqa: BLE001
                    pass
        for s in active:
            s.end("interrupted")
        if self._busy:
            self._busy = False
            self._activity(False)

    def _activity(self, busy):
        if self.on_activity is not None:
            try:
                self.on_activity(busy, self)
            except Exception:                 # noqa: BLE001
                pass

    def _step(self):
        model = self.model
        for s in self._active:
            if s.h.cancelled:
                s.end("interrupted")
            elif s.h.settings["max_new_tokens"] == 0:
                s.end("length")               # as generate(): no prefill, no token
        # one prefill chunk of the oldest stream still reading its prompt
        pre = next((s for s in self._active if s.finish is None and s.prefilled < len(s.ids)), None)
        if pre is not None:
            if pre.cache is None:
                pre.cache = model.new_cache(min(model.max_context, len(pre.ids) + pre.max_new))
            t = time.perf_counter()
            chunk = pre.ids[pre.prefilled:pre.prefilled + self.prefill_chunk]
            with model.forward_lock:
                logits = model.forward(np.asarray(chunk, dtype=np.int64), pre.cache, all_logits=False)
            pre.prefilled += len(chunk)
            pre.stats.prefill_s += time.perf_counter() - t
            if pre.prefilled == len(pre.ids):
                pre.stats.n_prefill = len(pre.ids)
                pre.advance(logits[-1])
                self.tokens += 1
        # one decode step for every stream with a sampled token to run
        dec = [s for s in self._active if s.finish is None and s.next_token is not None]
        if not dec:
            return
        for s in dec:
            if s.h.cancelled:
                s.end("interrupted")
        dec = [s for s in dec if s.finish is None]
        if not dec:
            return
        tokens = [s.next_token for s in dec]
        with model.forward_lock:
            if len(dec) == 1:                 # the one-token path (bitwise the same row)
                logits = model.forward(np.asarray(tokens, dtype=np.int64), dec[0].cache, all_logits=False)
            else:
                logits = model.forward_batch(np.asarray(tokens, dtype=np.int64), [s.cache for s in dec])
        now = time.perf_counter()
        for i, s in enumerate(dec):
            s.next_token = None
            try:
                s.advance(logits[i])
            except Exception as e:            # noqa: BLE001 - e.g. NaN logits: this stream only
                s.end("error", error=e)
        self.steps += 1
        self.tokens += len(dec)
        if len(dec) > 1:
            self.batched_tokens += len(dec)
        with self._cv:
            self._recent.append((now, len(dec)))


def _prompt_ids(model, prompt, add_special_tokens=True) -> list:
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer (tokenizer.json was not in its folder); "
                             "pass token ids instead of text, or add tokenizer.json")
        return model.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
    if isinstance(prompt, np.ndarray):
        prompt = prompt.reshape(-1).tolist()
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                                 for t in prompt):
        return [int(t) for t in prompt]
    raise TypeError("the prompt must be a string or a list of token ids")
