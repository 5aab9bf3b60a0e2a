import numpy as np
import pytest

from .conftest import ToyLM

GREEDY = dict(temperature=0)


def test_greedy_equals_argmax_of_logits_every_step(toy_lm):
    r = toy_lm.generate("The KV cache", max_new_tokens=12, ignore_eos=True, **GREEDY)
    ids = r.prompt_tokens + r.tokens
    full = toy_lm.logits(ids[:-1])
    n = len(r.prompt_tokens)
    assert r.tokens == [int(np.argmax(full[n - 1 + i])) for i in range(len(r.tokens))]


def test_same_seed_same_tokens(toy_lm):
    opts = dict(max_new_tokens=15, temperature=1.0, top_k=50, top_p=0.9, min_p=0.01, seed=1234, ignore_eos=True)
    a = toy_lm.generate("Ternary weights", **opts)
    b = toy_lm.new_session().generate("Ternary weights", **opts)
    c = toy_lm.generate("Ternary weights", **{**opts, "seed": 99})
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens
    assert a.settings["seed"] == 1234 and a.settings["top_k"] == 50


def test_result_fields(toy_lm):
    r = toy_lm.generate("Hello", max_new_tokens=5, ignore_eos=True, **GREEDY)
    assert r.stats.n_prompt == len(r.prompt_tokens) and r.stats.n_generated == 5 == len(r.tokens)
    assert r.stats.ttft_s > 0 and r.stats.prefill_tok_s > 0 and r.stats.decode_tok_s > 0
    assert r.finish_reason == "length"
    assert "GenerationResult(" in repr(r) and "n_generated=5" in repr(r)
    assert r.text == toy_lm.tokenizer.decode(r.tokens)


def test_stream_pieces_join_to_text(toy_lm):
    s = toy_lm.stream("Emoji 🙂", max_new_tokens=20, seed=3, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0,
                      ignore_eos=True)
    pieces = list(s)
    assert "".join(pieces) == s.result.text
    assert s.result.text == toy_lm.tokenizer.decode(s.result.tokens)


def test_kv_cache_reuse_counts_tokens(toy_lm):
    sess = toy_lm.new_session()
    r1 = sess.generate("User: How are you?", max_new_tokens=6, ignore_eos=True, **GREEDY)
    assert sess.tokens_processed == len(r1.prompt_tokens) + 5     # the last token is never run
    before = sess.tokens_processed
    follow = r1.prompt_tokens + r1.tokens + toy_lm.tokenizer.encode(" Assistant:", add_special_tokens=False)
    r2 = sess.generate(follow, max_new_tokens=1, **GREEDY)
    n_new = len(follow) - (len(r1.prompt_tokens) + 5)
    assert sess.tokens_processed - before == n_new                 # only the new tokens ran
    assert r2.stats.n_cached == len(follow) - n_new and r2.stats.n_prefill == n_new
    # and the result is the same as without any cache
    assert r2.tokens == toy_lm.new_session().generate(follow, max_new_tokens=1, **GREEDY).tokens
    # a prompt that diverges early recomputes from the divergence point
    before = sess.tokens_processed
    sess.generate(r1.prompt_tokens[:3] + [5, 6, 7], max_new_tokens=1, **GREEDY)
    assert sess.tokens_processed - before == 3


def test_same_prompt_twice_reruns_one_token(toy_lm):
    sess = toy_lm.new_session()
    a = sess.generate("abc def", max_new_tokens=1, **GREEDY)
    before = sess.tokens_processed
    b = sess.generate("abc def", max_new_tokens=1, **GREEDY)
    assert sess.tokens_processed - before == 1 and a.tokens == b.tokens


def test_stop_token(tiny_tokenizer):
    lm = ToyLM(tiny_tokenizer)
    r = lm.generate("Hi", max_new_tokens=10, ignore_eos=True, **GREEDY)
    stop_at = r.tokens[3]
    r2 = lm.new_session().generate("Hi", max_new_tokens=10, stop=[stop_at], ignore_eos=True, **GREEDY)
    first = r.tokens.index(stop_at)
    assert r2.tokens == r.tokens[:first + 1] and r2.finish_reason == "stop"
    assert r2.text == tiny_tokenizer.decode(r.tokens[:first])


def test_stop_string_is_cut_and_never_streamed(toy_lm):
    r = toy_lm.generate("Hi", max_new_tokens=30, ignore_eos=True, **GREEDY)
    assert len(r.text) > 6
    stop = r.text[4:7]
    s = toy_lm.new_session().stream("Hi", max_new_tokens=30, stop=[stop], ignore_eos=True, **GREEDY)
    streamed = "".join(s)
    assert s.result.finish_reason == "stop"
    assert streamed == s.result.text == r.text[:r.text.find(stop)]


def test_context_limit(tiny_tokenizer):
    lm = ToyLM(tiny_tokenizer, max_context=16)
    with pytest.raises(ValueError, match="context"):
        lm.generate(list(range(1, 20)), max_new_tokens=2)
    with pytest.raises(ValueError, match="context"):
        lm.logits(list(range(1, 20)))
    r = lm.generate(list(range(1, 12)), max_new_tokens=50, ignore_eos=True, **GREEDY)
    assert r.finish_reason == "context" and len(r.prompt_tokens) + len(r.tokens) == 17


@pytest.mark.parametrize("kw,word", [(dict(max_new_tokens=-1), "max_new_tokens"),
                                     (dict(temperature=-0.5), "temperature"),
                                     (dict(top_p=2.0), "top_p"), (dict(bogus=1), "bogus"),
                                     (dict(stop=[1.5]), "stop")])
def test_bad_options(toy_lm, kw, word):
    kw = {"max_new_tokens": 4, **kw}
    with pytest.raises((ValueError, TypeError)) as e:
        toy_lm.generate("x", **kw)
    assert word in str(e.value)


def test_bad_prompts(toy_lm):
    with pytest.raises(ValueError, match="vocabulary"):
        toy_lm.generate([1, 10 ** 6])
    with pytest.raises(ValueError, match="empty"):
        toy_lm.generate([])
    with pytest.raises(TypeError):
        toy_lm.generate(3.5)


def test_chat_keeps_history_and_stops_on_end_of_turn(toy_lm):
    sess = toy_lm.new_session()
    eot = toy_lm.tokenizer.token_to_id("<|eot_id|>")
    r = sess.chat("How are you?", max_new_tokens=8, **GREEDY)
    assert [m["role"] for m in sess.history] == ["user", "assistant"]
    assert sess.history[1]["content"] == r.text
    assert eot in r.settings["stop"]
    r2 = sess.chat("And now?", max_new_tokens=4, **GREEDY)
    assert len(sess.history) == 4 and r2.stats.n_cached > 0
    # a full message list leaves the history alone
    sess.chat([{"role": "user", "content": "x"}], max_new_tokens=2, **GREEDY)
    assert len(sess.history) == 4


def test_failed_request_keeps_history(toy_lm):
    sess = toy_lm.new_session()
    sess.chat("Hi", max_new_tokens=2, **GREEDY)
    with pytest.raises(ValueError):
        sess.chat("again", max_new_tokens=2, temperature=-1)
    assert len(sess.history) == 2


def test_interrupt_keeps_partial(toy_lm):
    s = toy_lm.stream("Hi", max_new_tokens=30, ignore_eos=True, **GREEDY)
    got = next(s)
    s.interrupt()
    assert s.result.finish_reason == "interrupted" and s.result.text.startswith(got)
    assert 1 <= s.result.stats.n_generated < 30


def test_chat_follow_up_reuses_the_reply_tokens(tiny_tokenizer):
    from ryzjupyter.engine.tokenizer import Tokenizer

    from .conftest import TINY_TOK
    tok = Tokenizer.from_pretrained(TINY_TOK)
    tok.chat_template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}<|eot_id|>{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    lm = ToyLM(tok, max_context=256)
    sess = lm.new_session()
    r1 = sess.chat("Hi", max_new_tokens=6, temperature=0)
    r2 = sess.chat("More", max_new_tokens=2, temperature=0)
    n_reply = len(r1.tokens) - (1 if r1.finish_reason == "stop" else 0)
    # everything up to the end of the reply was cached (the last reply token itself never ran)
    assert r2.stats.n_cached >= len(r1.prompt_tokens) + n_reply - 1
    assert r2.prompt_tokens[:len(r1.prompt_tokens) + n_reply] == r1.prompt_tokens + r1.tokens[:n_reply]


def test_chat_after_an_interrupted_turn_reuses_its_tokens(tiny_tokenizer):
    """A chat whose caller keeps the interrupted partial reply in the history (the %%ryz chat does)
    continues from the tokens the model produced, so the cache is reused past the partial reply
    (found by `bench soak`: re-tokenizing the partial text missed the cache after the prompt)."""
    from ryzjupyter.engine.tokenizer import Tokenizer

    from .conftest import TINY_TOK
    tok = Tokenizer.from_pretrained(TINY_TOK)
    tok.chat_template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}<|eot_id|>{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    lm = ToyLM(tok, max_context=256)
    sess = lm.new_session()
    s = sess.chat("Hi", max_new_tokens=20, temperature=0, ignore_eos=True, stream=True)
    for _ in range(6):
        next(s)
    s.interrupt()
    r1 = s.result
    assert r1.finish_reason == "interrupted" and sess.history == []      # whole turns only
    sess.history[:] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": r1.text}]
    r2 = sess.chat("More", max_new_tokens=2, temperature=0)
    assert r2.prompt_tokens[:len(r1.prompt_tokens) + len(r1.tokens)] == r1.prompt_tokens + r1.tokens
    assert r2.stats.n_cached >= len(r1.prompt_tokens) + len(r1.tokens) - 1


def test_chat_reuses_the_cache_when_the_template_trims_a_reply():
    """The demo's chat template trims each message: a reply that ends in a newline is written back
    without it, so the conversation text no longer starts with the previous prompt + reply. The
    next turn must still reuse the previous turn's prompt rows (found by `bench soak`: 45 of the 91
    cached prompt tokens were reused, the rest re-tokenized differently)."""
    import ryzjupyter
    s = ryzjupyter.load("demo").new_session()
    prev = None
    for t, p in enumerate(["And God said", "The king", "In the beginning", "def main():"]):
        r = s.chat(p, 30, temperature=0.8, seed=60 + t)         # seed 6's conversation: turn 3 follows
        if prev is not None:                                     # a reply that ends in "\n"
            assert r.stats.n_cached >= len(prev.prompt_tokens), (t, repr(prev.text[-6:]))
        prev = r
    assert any(m["content"] != m["content"].strip() for m in s.history if m["role"] == "assistant")


@pytest.mark.parametrize("folder", ["bitnet/packed", "recurrent/mamba_f32", "recurrent/rwkv_f32"])
def test_forward_refuses_bad_tokens_before_running_any(folder):
    """Every engine's forward() checks its tokens with decoding.generation.forward_tokens: none,
    too many for the cache's context, or one outside the vocabulary is a ValueError, and the cache
    is left as it was."""
    from pathlib import Path

    import ryzjupyter
    m = ryzjupyter.load(str(Path(__file__).resolve().parents[1] / "fixtures" / folder))
    c = m.new_cache(8)
    m.forward(np.array([1, 2, 3]), c)
    V = m.vocab_size
    for bad, match in [([], r"^forward\(\) needs at least one token$"),
                       ([1] * 6, r"^3 cached \+ 6 new tokens exceed the context of 8$"),
                       ([4, V], rf"^token ids must be in 0\.\.{V - 1}$"),
                       ([-1], rf"^token ids must be in 0\.\.{V - 1}$")]:
        with pytest.raises(ValueError, match=match):
            m.forward(np.array(bad, np.int64), c)
        assert c.tokens == [1, 2, 3]
    assert m.forward([[4], [5]], c).shape == (1, V) and c.tokens == [1, 2, 3, 4, 5]   # any shape, flattened
