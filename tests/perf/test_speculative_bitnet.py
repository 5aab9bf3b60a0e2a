"""Speculative decoding on the real engine (BitNet, the batched verify pass): greedy output is
token-for-token plain greedy output for every drafter, across prompt chunk boundaries, with KV
prefix reuse, in chat and with an int8 KV cache, on every ISA level; seeded sampling with a
deterministic drafter reproduces seeded plain sampling (the verify rows are bitwise decode steps);
the bundled draft model is found by name."""
from pathlib import Path

import pytest

import ryzjupyter

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "bitnet"
DRAFTS = ["lookup", "adjacency", "auto"]
PROMPT = "the cat sat on the mat and the cat sat on the hat and the cat"


def _same(a, b):
    assert a.tokens == b.tokens
    assert a.text == b.text and a.finish_reason == b.finish_reason


@pytest.fixture(scope="module")
def model():
    return ryzjupyter.load(str(FIX / "packed"), prefill_chunk=5)          # prompts cross chunk boundaries


@pytest.mark.parametrize("draft", DRAFTS)
def test_greedy_identical_every_isa(model, draft, isa):
    model._adjacency_table = None                                # a cold table, then a hot one
    for num_draft in (None, 3, 8):
        plain = model.new_session().generate(PROMPT, 40, temperature=0, ignore_eos=True)
        spec = model.new_session().generate(PROMPT, 40, temperature=0, ignore_eos=True, draft=draft,
                                            num_draft=num_draft)
        _same(plain, spec)
        assert spec.stats.target_passes == spec.stats.n_generated - spec.stats.accepted


def test_prefix_reuse_chat_and_int8_cache(isa):
    for kv in ("f32", "int8"):
        m = ryzjupyter.load(str(FIX / "packed"), prefill_chunk=7, kv_cache=kv)
        a, b = m.new_session(), m.new_session()
        for prompt in (PROMPT, PROMPT + " sat on the mat"):
            _same(a.generate(prompt, 20, temperature=0, ignore_eos=True),
                  b.generate(prompt, 20, temperature=0, ignore_eos=True, draft="auto"))
        assert b.tokens_reused > 0
        a, b = m.new_session(), m.new_session()
        for msg in ("the cat sat", "on the mat", "and the cat"):
            _same(a.chat(msg, 16, temperature=0), b.chat(msg, 16, temperature=0, draft="adjacency", num_draft=6))
        assert a.cache.tokens == b.cache.tokens


def test_seeded_sampling_reproduced(model):
    for draft in DRAFTS:
        kw = dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=7, ignore_eos=True)
        _same(model.new_session().generate(PROMPT, 30, **kw),
              model.new_session().generate(PROMPT, 30, draft=draft, **kw))


def test_bundled_draft_model_by_name(isa):
    m = ryzjupyter.load("demo")
    prompt = "And God said, Let there be light: and there was light. And God said"
    plain = m.new_session().generate(prompt, 24, temperature=0, ignore_eos=True)
    spec = m.new_session().generate(prompt, 24, temperature=0, ignore_eos=True, draft="demo-draft", num_draft=4)
    _same(plain, spec)
    assert spec.stats.drafted > 0 and spec.settings["draft"] == "demo-draft"
    with pytest.raises(ValueError, match="same tokenizer"):
        m.generate(prompt, 2, draft=str(FIX / "packed"))


def test_cli_draft_prints_the_same_text_and_its_figures(capsys):
    from ryzjupyter.__main__ import main
    args = ["generate", "--model", str(FIX / "packed"), "-t", "0", "-n", "24", "--stats", PROMPT]
    assert main(args) == 0
    plain = capsys.readouterr()
    assert main(args[:1] + ["--draft", "lookup", "--num-draft", "4"] + args[1:]) == 0
    spec = capsys.readouterr()
    assert spec.out == plain.out
    assert "[draft lookup:" in spec.err and "tokens per target pass" in spec.err
    assert "[draft" not in plain.err
    assert main(args[:1] + ["--draft", "demo-draft"] + args[1:]) == 2          # another tokenizer
    assert "same tokenizer" in capsys.readouterr().err
