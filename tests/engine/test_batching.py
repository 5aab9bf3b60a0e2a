"""Continuous batching (ryzjupyter.decoding.batching.Batcher) on the bundled demo model: every
stream's tokens under load equal model.generate() alone (greedy and seeded sampling), streams
join and leave between steps, decode steps really hold several streams, stop rules, cancel,
limits, and a notebook thread generating on the same model at the same time."""
import threading
import time

import pytest

import ryzjupyter
from ryzjupyter.decoding.batching import Batcher, BatcherClosed, BatcherFull

PROMPTS = ["The", "In the beginning God created", "def foo(x):\n    return", "Python is a programming",
           "Once upon a time there was", "And the LORD said unto Moses,", "import os\nimport", "The Lord is my",
           "class Point:", "Blessed are the", "for i in range(10):", "Thou shalt not"]


@pytest.fixture(scope="module")
def demo():
    # prefill_chunk 8: prompts longer than 8 tokens are read in several chunks, interleaved
    # with the decode steps of the other streams
    model = ryzjupyter.load(None, prefill_chunk=8)
    return model


def _alone(model, prompt, n, **kw):
    return model.new_session().generate(prompt, n, **kw)


def test_greedy_under_load_equals_alone(demo):
    b = Batcher(demo, max_batch=5)                    # 12 requests: 7 wait in the queue and join later
    try:
        refs = [_alone(demo, p, 24 + 3 * i, temperature=0) for i, p in enumerate(PROMPTS)]
        hs = [b.submit(p, 24 + 3 * i, temperature=0) for i, p in enumerate(PROMPTS)]
        for r, h in zip(refs, hs):
            g = h.wait(120)
            assert g.tokens == r.tokens and g.text == r.text and g.finish_reason == r.finish_reason
            assert g.stats.n_prompt == r.stats.n_prompt and g.stats.n_generated == r.stats.n_generated
        st = b.stats()
        assert st["finished"] == len(PROMPTS) and st["active"] == 0 and st["queued"] == 0
        # batching happened: far fewer decode steps than tokens, most tokens from steps of several streams
        assert b.batched and b.batched_tokens > 0.6 * st["tokens"]
        assert st["steps"] < st["tokens"] / 2
    finally:
        b.close()


def test_seeded_sampling_under_load_equals_alone(demo):
    b = Batcher(demo, max_batch=8)
    try:
        kw = [dict(temperature=0.7 + 0.05 * i, top_k=20 + i, top_p=0.9, seed=100 + i, repetition_penalty=1.1)
              for i in range(len(PROMPTS))]
        refs = [_alone(demo, p, 20, **k) for p, k in zip(PROMPTS, kw)]
        hs = [b.submit(p, 20, **k) for p, k in zip(PROMPTS, kw)]
        for r, h in zip(refs, hs):
            g = h.wait(120)
            assert g.tokens == r.tokens and g.text == r.text
            assert g.settings["seed"] == r.settings["seed"]
    finally:
        b.close()


def test_late_joiners_and_streaming_pieces(demo):
    """Requests submitted while others are decoding join between steps; the pieces a stream
    yields concatenate to its text."""
    b = Batcher(demo, max_batch=16)
    try:
        first = [b.submit(p, 60, temperature=0) for p in PROMPTS[:3]]
        while b.stats()["tokens"] < 10:
            time.sleep(0.002)
        late = [b.submit(p, 30, temperature=0) for p in PROMPTS[3:7]]
        for p, h, n in zip(PROMPTS[:7], first + late, [60] * 3 + [30] * 4):
            pieces = list(h)
            ref = _alone(demo, p, n, temperature=0)
            assert "".join(pieces) == h.result.text == ref.text
            assert h.result.tokens == ref.tokens
    finally:
        b.close()


def test_stop_rules(demo):
    ref = _alone(demo, PROMPTS[5], 40, temperature=0)
    word = ref.text.split()[3]
    b = Batcher(demo)
    try:
        for kw in (dict(stop=[word]), dict(stop=[word, "zzz"], ignore_eos=True), dict(ignore_eos=True)):
            want = _alone(demo, PROMPTS[5], 40, temperature=0, **kw)
            got = b.submit(PROMPTS[5], 40, temperature=0, **kw).wait(60)
            assert (got.text, got.tokens, got.finish_reason) == (want.text, want.tokens, want.finish_reason)
        assert b.submit(PROMPTS[5], 40, temperature=0, stop=[word]).wait(60).finish_reason == "stop"
        zero = b.submit(PROMPTS[0], 0).wait(10)
        assert zero.tokens == [] and zero.finish_reason == "length"
        # a prompt that nearly fills the context ends with finish_reason "context", as alone
        long = "the " * (demo.max_context - 6)
        want = _alone(demo, long, 50, temperature=0)
        got = b.submit(long, 50, temperature=0).wait(60)
        assert want.finish_reason == got.finish_reason == "context" and got.tokens == want.tokens
    finally:
        b.close()


def test_cancel_leaves_the_others_running(demo):
    b = Batcher(demo, max_batch=4)
    try:
        keep = b.submit(PROMPTS[1], 80, temperature=0, ignore_eos=True)
        drop = b.submit(PROMPTS[2], 10_000 if demo.max_context > 10_000 else demo.max_context, temperature=0,
                        ignore_eos=True)
        next(iter(drop))
        drop.cancel()
        r = drop.wait(30)
        assert r.finish_reason == "interrupted" and 0 < len(r.tokens) < 150
        assert keep.wait(60).tokens == _alone(demo, PROMPTS[1], 80, temperature=0, ignore_eos=True).tokens
        queued = [b.submit(p, 200, temperature=0, ignore_eos=True) for p in PROMPTS[:8]]
        assert b.cancel_all() >= 4
        for h in queued:
            assert h.wait(30).finish_reason == "interrupted"
        assert b.stats()["active"] == 0
    finally:
        b.close()


def test_limits_and_bad_options(demo):
    b = Batcher(demo, max_batch=1, max_queue=2)
    try:
        with pytest.raises(TypeError, match="unknown generation option"):
            b.submit("x", 4, temprature=0)
        with pytest.raises(ValueError, match="max_new_tokens"):
            b.submit("x", -1)
        with pytest.raises(ValueError, match="temperature"):
            b.submit("x", 4, temperature=-1)
        with pytest.raises(ValueError, match="context holds"):
            b.submit([5] * (demo.max_context + 1), 4)
        with pytest.raises(ValueError, match="vocabulary"):
            b.submit([5, demo.vocab_size], 4)
        with pytest.raises(ValueError, match="empty"):
            b.submit([], 4)
        hs = []
        with pytest.raises(BatcherFull):
            for _ in range(10):
                hs.append(b.submit("The", 200, ignore_eos=True))
        assert 2 <= len(hs) <= 3
        b.cancel_all()
    finally:
        b.close()
    with pytest.raises(BatcherClosed):
        b.submit("x", 4)
    for h in hs:
        assert h.done.is_set()
    with pytest.raises(ValueError):
        Batcher(demo, max_batch=0)


def test_a_cancelled_waiting_request_frees_its_place_at_once(demo):
    """The server refuses a request of n generations as a whole by cancelling the ones it had
    queued; the next request must find their places free even while the engine thread is inside a
    step (held here by taking the model's forward lock, as a notebook cell does)."""
    import time
    b = Batcher(demo, max_batch=1, max_queue=1)
    try:
        with demo.forward_lock:                              # the engine thread blocks in its step
            running = b.submit("The", 50, ignore_eos=True)
            deadline = time.monotonic() + 30
            while b.stats()["active"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            waiting = b.submit("And", 50, ignore_eos=True)
            with pytest.raises(BatcherFull):
                b.submit("In", 50, ignore_eos=True)
            waiting.cancel()
            nxt = b.submit("In", 4, temperature=0, ignore_eos=True)   # no BatcherFull: the place is free
            assert waiting.done.is_set() and waiting.result.finish_reason == "interrupted"
            assert b.stats()["queued"] == 1 and b.stats()["finished"] == 1      # the dropped one counts as ended
            running.cancel()
        assert nxt.wait(60).tokens == _alone(demo, "In", 4, temperature=0, ignore_eos=True).tokens
    finally:
        b.close()


def test_notebook_thread_and_batcher_share_the_model(demo):
    """A generation in another thread (a notebook cell) on the same model while the batcher
    decodes: the model's forward lock makes them take turns; both outputs are exact."""
    b = Batcher(demo, max_batch=4)
    try:
        refs = [_alone(demo, p, 40, temperature=0) for p in PROMPTS[:4]]
        cell_ref = _alone(demo, PROMPTS[8], 60, temperature=0)
        hs = [b.submit(p, 40, temperature=0) for p in PROMPTS[:4]]
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", demo.new_session().generate(PROMPTS[8], 60,
                                                                                           temperature=0)))
        t.start()
        t.join(120)
        for r, h in zip(refs, hs):
            assert h.wait(60).tokens == r.tokens
        assert out["r"].tokens == cell_ref.tokens
    finally:
        b.close()


def test_activity_callbacks(demo):
    events = []
    b = Batcher(demo, on_activity=lambda busy, _: events.append(busy))
    try:
        b.submit("The", 5, temperature=0).wait(30)
        deadline = time.time() + 10
        while events[-1:] != [False] and time.time() < deadline:
            time.sleep(0.01)
        assert events == [True, False]
    finally:
        b.close()
