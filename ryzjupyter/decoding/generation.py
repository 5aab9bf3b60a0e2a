"""Generation: sessions with a KV cache, the decode loop, streaming, stop rules, chat, stats.

A model engine (bitnet.py, ...) provides four things and inherits the rest from LanguageModel:

    vocab_size, max_context, tokenizer
    new_cache(max_len)                    -> a cache with .tokens, .reuse(ids), .truncate(n), .max_len
    forward(token_ids, cache, all_logits) -> float32 logits [M, vocab] (or [1, vocab] for the last
                                             token only); runs the tokens at positions len(cache)...,
                                             writes their keys/values and appends them to cache.tokens
                                             (its tokens checked by forward_tokens(tokens, cache, vocab))

and may override the verify pass of speculative decoding (``verify``, ``verify_tree``: row i of
their logits must be bitwise what a one-token forward() gives for token i after its ancestors; the
defaults here run the tokens one by one, exact but no faster than decoding).

A Session owns one cache. Feeding it a token sequence keeps the longest cached prefix and runs
only the rest (`tokens_processed` counts what really ran), so a follow-up prompt that extends the
previous prompt + answer costs only its new tokens.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ryzjupyter.decoding import speculative
from ryzjupyter.decoding import recycling
from ryzjupyter.engine.profiling import PROFILER
from ryzjupyter.engine.sampling import Sampler, SamplingSettings


# ----------------------------------------------------------------------------
# results

@dataclass
class GenerationStats:
    """Counts and timings of one generation (`result.stats`, the footer of a `%%ryz` cell).

    Times are wall-clock seconds measured around the engine's calls; speeds are tokens per second
    of the phase they name. `as_dict()` gives a plain dict (what the surfaces and the JSON records
    carry)."""
    n_prompt: int = 0          # prompt tokens
    n_cached: int = 0          # prompt tokens reused from the KV cache (not recomputed)
    n_prefill: int = 0         # prompt tokens actually run
    n_generated: int = 0       # tokens produced (a final stop token included)
    ttft_s: float = 0.0        # time to first token: call -> first token sampled
    prefill_s: float = 0.0
    decode_s: float = 0.0      # first token -> last token
    total_s: float = 0.0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0  # (n_generated - 1) / decode_s
    # speculative decoding (draft=...): zero / plain figures without it
    drafter: str = ""          # "", "lookup", "adjacency", "auto" or "model"
    drafted: int = 0           # draft tokens verified by the target
    accepted: int = 0          # emitted tokens that were draft tokens (each emitted token counted once)
    target_passes: int = 0     # target forward passes that produced tokens (the prefill included)
    acceptance: float = 0.0    # accepted / drafted
    tokens_per_pass: float = 0.0   # n_generated / target_passes (1.0 for plain decoding)
    draft_s: float = 0.0       # seconds drafting (the draft model's passes, lookups, the tree)
    verify_s: float = 0.0      # seconds in the target's passes while decoding (verify passes, plain steps)
    sampling_s: float = 0.0    # seconds in the sampler while decoding (the acceptance rule included)
    pass_sizes: dict = field(default_factory=dict)   # draft tokens in a decode pass -> passes (0: plain steps)

    def as_dict(self):
        return dict(self.__dict__)


@dataclass
class GenerationResult:
    """What `model.generate`, `Session.generate` and `model.chat` return.

    `text` is the decoded reply (without the prompt), `tokens` its token ids, `stats` a
    `GenerationStats`, `settings` the sampling settings used, `finish_reason` why it ended
    ("length": max tokens, "stop": a stop token or string, "context": the context is full,
    "interrupted": the stop button or KeyboardInterrupt, keeping the partial reply), `profile` where
    the time went when profiling was on, `recycled` the RSUs retrieved into the prompt with
    ``recycle=bank`` (decoding/recycling.py: id, text, score, source, tokens). `str(result)` is the text."""
    text: str
    tokens: list
    stats: GenerationStats
    settings: dict
    finish_reason: str = "length"   # "length", "stop" (stop token or string), "context", "interrupted"
    prompt_tokens: list = field(default_factory=list, repr=False)
    profile: object = field(default=None, repr=False)   # ryzjupyter.engine.profiling.Profile: where the time went
    recycled: list = field(default_factory=list, repr=False)  # RSUs put into the prompt (recycle=bank): Recalled

    def __str__(self):
        return self.text

    def __repr__(self):
        t = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return (f"GenerationResult({t!r}, n_generated={self.stats.n_generated}, "
                f"finish_reason={self.finish_reason!r}, decode={self.stats.decode_tok_s:.1f} tok/s)")


# ----------------------------------------------------------------------------
# options

def _check_max_new_tokens(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {n!r}")
    return int(n)


def _split_stop(stop):
    """`stop` may hold strings (stop strings) and ints (stop token ids)."""
    if stop is None:
        return [], []
    if isinstance(stop, (str, int)):
        stop = [stop]
    strings, ids = [], []
    for s in stop:
        if isinstance(s, str):
            if s == "":
                raise ValueError("stop strings must not be empty")
            strings.append(s)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            ids.append(int(s))
        else:
            raise ValueError(f"stop entries must be strings or token ids, got {s!r}")
    return strings, ids


def _held_suffix(text, stop_strings):
    """Length of the longest suffix of text that is a proper prefix of a stop string
    (that text must wait: the next token may complete the stop string)."""
    best = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


# ----------------------------------------------------------------------------
# the session

class Session:
    """A conversation with one model: its KV cache, its chat history, its counters."""

    def __init__(self, model, max_context=None):
        self.model = model
        n = model.max_context if max_context is None else int(max_context)
        if n < 1 or n > model.max_context:
            raise ValueError(f"max_context must be in 1..{model.max_context} (the model's context), got {n}")
        self.max_context = n
        self.cache = model.new_cache(n)
        self.history: list[dict] = []
        self.tokens_processed = 0      # tokens run through forward() in this session
        self.tokens_reused = 0         # prompt tokens served from the cache instead
        self.last_result: GenerationResult | None = None
        self._chat_tail = ("", [])     # (rendered chat text incl. the last reply, its token ids)
        self._chat_prompt = ("", [])   # (the last turn's rendered prompt, before its reply, its token ids)

    # -- running tokens
    def prefill(self, token_ids):
        """Make the cache hold exactly `token_ids`, running only what is not cached; returns the
        logits after the last token (float32 [vocab]) and the number of reused tokens."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("the prompt is empty; give at least one token (most models want a BOS token)")
        if len(ids) > self.max_context:
            raise ValueError(f"the prompt has {len(ids)} tokens but the context holds {self.max_context}; "
                             "shorten the prompt (or load the model with a larger max_context)")
        vocab = self.model.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        with self.model.forward_lock:
            kept = self.cache.reuse(ids)
            new = ids[kept:]
            logits = self.model.forward(np.asarray(new, dtype=np.int64), self.cache, all_logits=False)
        self.tokens_processed += len(new)
        self.tokens_reused += kept
        return logits[-1], kept

    def step(self, token_id):
        """Run one token after the cached ones; returns its logits [vocab]."""
        with self.model.forward_lock:
            logits = self.model.forward(np.asarray([int(token_id)], dtype=np.int64), self.cache, all_logits=False)
        self.tokens_processed += 1
        return logits[-1]

    def verify(self, tokens):
        """Speculative decoding's chain verify pass after the cached tokens (model.verify): the
        tokens are appended to the cache; returns logits [n, vocab]."""
        with self.model.forward_lock:
            rows = self.model.verify(tokens, self.cache)
        self.tokens_processed += len(tokens)
        return rows

    def verify_tree(self, tokens, depths):
        """A draft tree's verify pass (model.verify_tree): (logits, commit(path))."""
        with self.model.forward_lock:
            rows, commit = self.model.verify_tree(tokens, depths, self.cache)
        self.tokens_processed += len(tokens)

        def locked_commit(path):
            with self.model.forward_lock:
                commit(path)
        return rows, locked_commit

    def _draft_session(self, draft_model):
        """This session's session on a draft model (its cache follows this one's context)."""
        ds = getattr(self, "_draft_sessions", None)
        if ds is None:
            ds = self._draft_sessions = {}
        s = ds.get(id(draft_model))
        if s is None or s.model is not draft_model:
            s = ds[id(draft_model)] = Session(draft_model, min(draft_model.max_context, self.max_context))
        return s

    def reset(self):
        self.cache.truncate(0)
        self.history.clear()
        self._chat_tail = ("", [])
        self._chat_prompt = ("", [])

    # -- prompts
    def _prompt_ids(self, prompt, add_special_tokens=True):
        if isinstance(prompt, str):
            if self.model.tokenizer is None:
                raise ValueError("this model has no tokenizer (tokenizer.json was not in its folder); "
                                 "pass token ids instead of text, or add tokenizer.json")
            return self.model.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        if isinstance(prompt, np.ndarray):
            prompt = prompt.reshape(-1).tolist()
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, (int, np.integer)) and
                                                     not isinstance(t, bool) for t in prompt):
            return [int(t) for t in prompt]
        raise TypeError("the prompt must be a string or a list of token ids")

    # -- generation
    def stream(self, prompt, max_new_tokens=128, *, stop=None, ignore_eos=False, add_special_tokens=True,
               recycle=None, recycle_k=recycling.DEFAULT_K, recycle_budget=recycling.DEFAULT_BUDGET, **sampling):
        """An iterator of text pieces; after it is exhausted `.result` holds the GenerationResult.
        ``recycle=bank`` puts up to ``recycle_k`` RSUs retrieved for a text prompt before it, within
        ``recycle_budget`` tokens (decoding/recycling.py); ``result.recycled`` lists them."""
        recalled = []
        if recycle is not None:
            if not isinstance(prompt, str):
                raise TypeError("recycle= needs a text prompt (the bank is searched with it), not token ids")
            recalled = recycling.recall(recycle, prompt, self.model.tokenizer, recycle_k, recycle_budget)
            prompt = recycling.with_context(prompt, recalled)
        s = TextStream(self, prompt, max_new_tokens, stop=stop, ignore_eos=ignore_eos,
                       add_special_tokens=add_special_tokens, **sampling)
        s.recycled = recalled
        return s

    def generate(self, prompt, max_new_tokens=128, **kw) -> GenerationResult:
        s = self.stream(prompt, max_new_tokens, **kw)
        try:
            for _ in s:
                pass
        except KeyboardInterrupt:
            s.interrupt()
        return s.result

    def chat(self, message, max_new_tokens=256, *, system=None, stream=False, recycle=None,
             recycle_k=recycling.DEFAULT_K, recycle_budget=recycling.DEFAULT_BUDGET, **kw):
        """Chat turn. `message` is a string (appended to this session's history as the user's turn;
        the reply is added when generation ends) or a full list of messages (history untouched).
        ``recycle=bank``: the RSUs retrieved for the user's (last) message go before it in that
        turn, within ``recycle_budget`` tokens, skipping units the conversation already holds
        (decoding/recycling.py); the history keeps the turn as the model read it, context included,
        and ``result.recycled`` lists them."""
        tok = self.model.tokenizer
        if tok is None:
            raise ValueError("chat needs a tokenizer with a chat template; this model folder has no "
                             "tokenizer.json")
        if isinstance(message, str):
            msgs = list(self.history)
            if system is not None and not any(m.get("role") == "system" for m in msgs):
                msgs.insert(0, {"role": "system", "content": system})
            msgs.append({"role": "user", "content": message})
            keep = True
        else:
            msgs = list(message)
            if system is not None:
                msgs.insert(0, {"role": "system", "content": system})
            keep = False
        recalled = []
        if recycle is not None:
            last = msgs[-1] if msgs else None
            if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), str):
                raise TypeError("recycle= in chat needs the last message to be the user's, with text content "
                                "(the bank is searched with it)")
            seen = "\n".join(str(m.get("content", "")) for m in msgs[:-1])
            recalled = recycling.recall(recycle, last["content"], tok, recycle_k, recycle_budget, seen=seen)
            msgs[-1] = {**last, "content": recycling.with_context(last["content"], recalled)}
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        prev_text, prev_ids = self._chat_tail
        if prev_text and text.startswith(prev_text):
            # the conversation so far, as the model produced it: keep its own token ids for the
            # previous reply (re-tokenizing the text may split it differently and miss the cache)
            ids = prev_ids + tok.encode(text[len(prev_text):], add_special_tokens=False)
        elif self._chat_prompt[0] and text.startswith(self._chat_prompt[0]):
            # the template rewrote the previous reply (a chat template that trims it, say): keep the
            # previous turn's prompt ids, so the cached rows are reused up to that reply at least
            p_text, p_ids = self._chat_prompt
            ids = p_ids + tok.encode(text[len(p_text):], add_special_tokens=False)
        else:
            ids = tok.encode(text, add_special_tokens=False)
        stops = _split_stop(kw.pop("stop", None))
        stop = stops[0] + stops[1] + list(tok.stop_token_ids)

        def on_done(result):
            if not keep:
                return
            self._chat_prompt = (text, list(ids))
            toks = list(result.tokens)
            if result.finish_reason == "interrupted":
                # the history keeps only whole turns; a caller that keeps the partial reply in its
                # own history (the %%ryz chat does) continues from these ids, which the cache holds
                self._chat_tail = (text + result.text, list(ids) + toks) if toks else ("", [])
                return
            self.history[:] = msgs + [{"role": "assistant", "content": result.text}]
            if toks and toks[-1] in ts.stop_ids:
                toks = toks[:-1]                       # the template writes the end of turn itself
            elif result.finish_reason == "stop":       # cut by a stop string: text and ids differ
                self._chat_tail = ("", [])
                return
            self._chat_tail = (text + result.text, list(ids) + toks)

        ts = TextStream(self, ids, max_new_tokens, stop=stop, on_done=on_done, **kw)
        ts.recycled = recalled
        ts.user_message = msgs[-1]["content"] if recycle is not None else None   # the turn as the model read it
        if stream:
            return ts
        try:
            for _ in ts:
                pass
        except KeyboardInterrupt:
            ts.interrupt()
        return ts.result


class TextStream:
    """Iterator over the text pieces of one generation (see Session.stream)."""

    def __init__(self, session, prompt, max_new_tokens, *, stop=None, ignore_eos=False, add_special_tokens=True,
                 on_done=None, draft=None, num_draft=None, **sampling):
        unknown = set(sampling) - set(SamplingSettings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}; valid: "
                            f"max_new_tokens, stop, ignore_eos, draft, num_draft, "
                            f"{', '.join(SamplingSettings.__dataclass_fields__)}")
        self.session = session
        self.max_new_tokens = _check_max_new_tokens(max_new_tokens)
        self.stop_strings, stop_ids = _split_stop(stop)
        tok = session.model.tokenizer
        self.stop_ids = set(stop_ids)
        if not ignore_eos and tok is not None:
            self.stop_ids |= set(tok.stop_token_ids)
        self.sampler = Sampler(SamplingSettings(**sampling))      # validates the options
        self.draft_kind, self.draft_model, self.num_draft = speculative.resolve(session.model, draft, num_draft)
        self.draft = draft if isinstance(draft, str) or draft is None else getattr(draft, "name", "model")
        self.prompt_ids = session._prompt_ids(prompt, add_special_tokens)
        self.on_done = on_done
        self.result: GenerationResult | None = None
        self._gen = self._run()
        self._interrupted = False
        self.n_generated = 0        # tokens emitted so far (live: also those no text piece showed yet)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    def interrupt(self):
        """Stop now and keep what was generated (finish_reason 'interrupted')."""
        self._interrupted = True
        for _ in self._gen:
            pass

    def close(self):
        self.interrupt()

    @property
    def settings(self):
        d = self.sampler.settings.as_dict()
        d.update(max_new_tokens=self.max_new_tokens, stop=self.stop_strings + sorted(self.stop_ids))
        if self.draft_kind is not None:
            d.update(draft=self.draft, num_draft=self.num_draft)
        return d

    def _tokens(self, logits, ctx, spec):
        """The emitted tokens, one at a time, as (token, was_a_draft). Plain decoding: one step a
        token. Speculative: a round emits up to its accepted drafts + 1 (never more than the
        budget and the context leave room for). The caller stops asking when it is done, so no
        pass runs after the last token."""
        session, prof = self.session, PROFILER
        pt = prof.tic()
        t = self.sampler.sample(logits, ctx)
        prof.toc("sampling", pt)
        if spec is not None:
            spec.target_passes += 1
        yield t, False
        while True:
            ctx.append(t)
            if spec is None:
                logits = session.step(t)
                pt = prof.tic()
                t = self.sampler.sample(logits, ctx)
                prof.toc("sampling", pt)
                yield t, False
                continue
            left = self.max_new_tokens - (len(ctx) - len(self.prompt_ids))
            room = session.max_context - len(session.cache)
            out, acc = spec.round(session, ctx, min(left, room) - 1)
            for i, t in enumerate(out[:-1]):
                yield t, True
                ctx.append(t)
            t = out[-1]
            yield t, False

    def _run(self):
        session, model = self.session, self.session.model
        tok = model.tokenizer
        stats = GenerationStats(n_prompt=len(self.prompt_ids))
        out: list[int] = []
        text_parts: list[str] = []
        pending = ""
        finish = "length"
        prof = PROFILER
        prof.begin()
        t0 = time.perf_counter()
        t_first = None
        spec_obj = None
        decoder = tok.decoder(context_ids=self.prompt_ids) if tok is not None else None
        try:
            if self.max_new_tokens > 0 and not self._interrupted:
                prof.stage("prefill")
                logits, kept = session.prefill(self.prompt_ids)
                prof.stage("decode")
                stats.n_cached, stats.n_prefill = kept, len(self.prompt_ids) - kept
                stats.prefill_s = time.perf_counter() - t0
                ctx = list(self.prompt_ids)
                spec = None
                if self.draft_kind is not None:
                    spec = speculative.Speculation(session, self.draft_kind, self.draft_model, self.num_draft,
                                                   self.sampler)
                    stats.drafter = self.draft_kind
                    spec_obj = spec
                tokens = self._tokens(logits, ctx, spec)
                while True:
                    if self._interrupted:
                        finish = "interrupted"
                        break
                    t, was_draft = next(tokens)
                    prof.token()
                    out.append(t)
                    self.n_generated = len(out)
                    stats.accepted += was_draft
                    if t_first is None:
                        t_first = time.perf_counter()
                    if t in self.stop_ids:
                        finish = "stop"
                        break
                    pt = prof.tic()
                    if decoder is not None:
                        pending += decoder.push(t)
                    prof.toc("detokenize", pt)
                    if self.stop_strings and pending:
                        hit = min(((pending.find(s), s) for s in self.stop_strings if s in pending),
                                  default=None)
                        if hit is not None:
                            pending = pending[:hit[0]]
                            finish = "stop"
                            break
                        hold = _held_suffix(pending, self.stop_strings)
                    else:
                        hold = 0
                    if len(pending) > hold:
                        piece, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
                        text_parts.append(piece)
                        yield piece
                    if len(out) >= self.max_new_tokens:
                        break
                    # the next token needs a pass over the last one: room for it in the context
                    # (counted as plain decoding would: the cache holds the prompt + out[:-1])
                    if len(self.prompt_ids) + len(out) > session.max_context:
                        finish = "context"
                        break
                    if self._interrupted:
                        finish = "interrupted"
                        break
                tokens.close()
                # speculative passes may have run accepted tokens past where the output ended
                # (a stop): the cache keeps what plain decoding keeps, the prompt + out[:-1]
                if spec is not None and out and len(session.cache) > len(self.prompt_ids) + len(out) - 1:
                    session.cache.truncate(len(self.prompt_ids) + len(out) - 1)
            if finish != "stop" and decoder is not None:
                pending += decoder.flush()
            if pending:
                text_parts.append(pending)
                if not self._interrupted:
                    yield pending
        except KeyboardInterrupt:
            finish = "interrupted"
        finally:
            end = time.perf_counter()
            stats.n_generated = len(out)
            stats.total_s = end - t0
            if t_first is not None:
                stats.ttft_s = t_first - t0
                stats.decode_s = end - t_first
            if stats.prefill_s > 0:
                stats.prefill_tok_s = stats.n_prefill / stats.prefill_s
            if stats.decode_s > 0 and len(out) > 1:
                stats.decode_tok_s = (len(out) - 1) / stats.decode_s
            if spec_obj is not None:
                stats.drafted, stats.target_passes = spec_obj.drafted, spec_obj.target_passes
                stats.draft_s, stats.verify_s, stats.sampling_s = spec_obj.draft_s, spec_obj.verify_s, spec_obj.sampling_s
                stats.acceptance = stats.accepted / stats.drafted if stats.drafted else 0.0
                stats.pass_sizes = dict(sorted(spec_obj.pass_sizes.items()))
            elif out:
                stats.target_passes = len(out)
            if stats.target_passes:
                stats.tokens_per_pass = len(out) / stats.target_passes
            self.result = GenerationResult("".join(text_parts), out, stats, self.settings, finish,
                                           list(self.prompt_ids), recycled=getattr(self, "recycled", []))
            self.result.profile = prof.end(
                n_prompt=stats.n_prompt, n_prefill=stats.n_prefill, n_generated=len(out),
                memory={"model_bytes": int(getattr(model, "nbytes", 0) or 0),
                        "kv_cache_bytes": int(getattr(session.cache, "nbytes", 0) or 0)})
            session.last_result = self.result
            if self.on_done is not None:
                self.on_done(self.result)


# ----------------------------------------------------------------------------
# what every engine's model class inherits

_LOCK_INIT = threading.Lock()


def forward_tokens(tokens, cache, vocab_size) -> np.ndarray:
    """The token ids an engine's forward() runs after the cached ones, as int64 [M]; ValueError
    when there are none, when they do not fit in the cache's context (``cache.max_len``) or when
    one is outside 0..vocab_size-1 (checked before any of them runs)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
    M, pos0 = tokens.size, len(cache)
    if M == 0:
        raise ValueError("forward() needs at least one token")
    if pos0 + M > cache.max_len:
        raise ValueError(f"{pos0} cached + {M} new tokens exceed the context of {cache.max_len}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"token ids must be in 0..{vocab_size - 1}")
    return tokens


class LanguageModel:
    """generate / stream / chat / logits on top of an engine's forward()."""

    _default_session: Session | None = None
    _forward_lock: threading.Lock | None = None

    @property
    def forward_lock(self) -> threading.Lock:
        """Held around every forward pass a Session or a batcher runs: a model's activation
        buffers are shared, so two threads (a notebook cell and the server) take turns token by
        token instead of running the model at the same time."""
        lock = self._forward_lock
        if lock is None:
            with _LOCK_INIT:
                if self._forward_lock is None:
                    self._forward_lock = threading.Lock()
                lock = self._forward_lock
        return lock

    def forward_batch(self, tokens, caches) -> np.ndarray:
        """One new token for each of several sequences: ``tokens[m]`` runs at position
        ``len(caches[m])`` of ``caches[m]``. Returns float32 logits [len(tokens), vocab], row m
        the same as ``forward([tokens[m]], caches[m])``. Families with a batched step (BitNet:
        the linears as one GEMM over the streams) override this; this one runs them in turn."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.size == 0 or tokens.size != len(caches):
            raise ValueError(f"forward_batch needs one token per cache, got {tokens.size} tokens for "
                             f"{len(caches)} caches")
        if len({id(c) for c in caches}) != len(caches):
            raise ValueError("forward_batch: a cache appears twice; each stream needs a cache of its own")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}")
        for m, c in enumerate(caches):                 # checked first: nothing runs if one cannot
            if len(c) + 1 > c.max_len:
                raise ValueError(f"stream {m}: {len(c)} cached + 1 new token exceed the context of {c.max_len}")
        return np.concatenate([self.forward(tokens[m:m + 1], c, all_logits=False)
                               for m, c in enumerate(caches)])

    @property
    def session(self) -> Session:
        """The model's default session (its KV cache persists across calls)."""
        if self._default_session is None:
            self._default_session = Session(self)
        return self._default_session

    def new_session(self, max_context=None) -> Session:
        return Session(self, max_context)

    def reset(self):
        """Forget the default session's cache and chat history."""
        if self._default_session is not None:
            self._default_session.reset()

    def generate(self, prompt, max_new_tokens=128, **kw) -> GenerationResult:
        """Generate a continuation of `prompt` (text or token ids). Options: temperature, top_k, top_p,
        min_p, repetition_penalty, seed, stop=[strings or ids], ignore_eos."""
        return self.session.generate(prompt, max_new_tokens, **kw)

    def stream(self, prompt, max_new_tokens=128, **kw) -> TextStream:
        """Like generate() but yields text pieces as they are decoded; `.result` at the end."""
        return self.session.stream(prompt, max_new_tokens, **kw)

    def chat(self, messages, max_new_tokens=256, **kw):
        """Chat with the checkpoint's template; a string continues the default session's history."""
        return self.session.chat(messages, max_new_tokens, **kw)

    _loader = None                      # ryzjupyter.load sets it on the models it makes

    def load_draft(self, name):
        """The draft model named `name` (a bundled name such as ``"demo-draft"`` or a folder) for
        ``draft=name``, loaded once per target model with the loader that made this one."""
        drafts = self.__dict__.setdefault("_draft_models", {})
        if name not in drafts:
            if self._loader is None:
                raise ValueError(f"this model cannot load a draft model by name ({name!r}): it was not made "
                                 "by ryzjupyter.load; pass a loaded model as draft=")
            drafts[name] = self._loader(name)
        return drafts[name]

    def verify(self, tokens, cache) -> np.ndarray:
        """The verify pass of speculative decoding: run `tokens` after the cached ones (they are
        appended to the cache) and return float32 logits [n, vocab], row i bitwise what a one-token
        forward() gives for tokens[i] after tokens[:i]. This default runs them one by one (with
        ``_keep_position`` before the first and after each); a family with a batched pass (BitNet)
        overrides it."""
        self._keep_position(cache)
        rows = []
        for t in tokens:
            rows.append(self.forward(np.asarray([int(t)], np.int64), cache, all_logits=False)[-1])
            self._keep_position(cache)
        return np.stack(rows)

    def _keep_position(self, cache):
        """Called by the verify passes where the speculative decoder may later truncate the cache
        to: before the first token and after each. A KV cache can go back to any position, so
        nothing is needed here; a recurrent family keeps a copy of its state (RecurrentModel)."""

    def verify_tree(self, tokens, depths, cache):
        """A tree of tokens after the cached ones (depth-first preorder, depths as in
        ryzjupyter.decoding.tree): returns (logits [n, vocab], commit). Row i is bitwise what a
        one-token forward() gives for tokens[i] right after its ancestors; cache.tokens are left
        as they were, and ``commit(path)`` appends the nodes of a root-to-node path. This default
        runs the nodes one by one with the cache as a stack (``_keep_position`` before the first
        and after each, so that the cache can go back to a node's parent) and reruns the
        committed path."""
        from ryzjupyter.decoding.tree import parents_of
        tokens = [int(t) for t in tokens]
        depths = [int(d) for d in depths]
        parents = parents_of(depths)
        pos = len(cache)
        if pos + max(depths) + 1 > cache.max_len:
            raise ValueError(f"{pos} cached + {max(depths) + 1} new positions exceed the context of {cache.max_len}")
        self._keep_position(cache)
        rows = []
        for t, d in zip(tokens, depths):
            cache.truncate(pos + d)
            rows.append(self.forward(np.asarray([t], np.int64), cache, all_logits=False)[-1])
            self._keep_position(cache)
        cache.truncate(pos)

        def commit(path):
            path = [int(i) for i in path]
            if path and (path[0] != 0 or any(parents[b] != a for a, b in zip(path, path[1:]))):
                raise ValueError(f"commit needs a root-to-node path of the verified tree, got {path}")
            if len(cache) != pos:
                raise ValueError("the cache changed since the verify pass; commit the path right after it")
            for i in path:
                self.forward(np.asarray([tokens[i]], np.int64), cache, all_logits=False)
        return np.stack(rows), commit

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits [len(token_ids), vocab] for a whole sequence (one batched prefill)."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("logits() needs at least one token id")
        if ids.size > self.max_context:
            raise ValueError(f"{ids.size} tokens exceed the model's context of {self.max_context}; "
                             "pass a shorter sequence")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        cache = self.new_cache(int(ids.size))
        return self.forward(ids, cache, all_logits=True)
