"""Recycling into the prompt: model.generate(..., recycle=bank) with the bundled demo model and a
real bank: what goes in (best first, deduplicated, within the budget), the provenance in
result.recycled, the prompt the model actually read, and clear errors."""
import pytest

import ryzjupyter
from ryzjupyter.decoding import recycling

pytest.importorskip("qdrant_client", reason="qdrant-client is in the memory extra (ci pulls it)")

from ryzjupyter.memory.bank import RecycleBank  # noqa: E402

GENESIS = "In the beginning God created the heaven and the earth. And the earth was without form, and void."
NOTES = ["The asyncio event loop runs coroutines and callbacks.",
         "The csv module reads rows of comma separated values.",
         "And God said, Let there be light: and there was light."]


@pytest.fixture(scope="module")
def model():
    return ryzjupyter.load()


@pytest.fixture
def bank(tmp_path):
    b = RecycleBank(tmp_path / "bank")
    b.add(GENESIS, source="file", meta={"book": "genesis"}, segment_text=False)
    for t in NOTES:
        b.add(t, source="cell", segment_text=False)
    yield b
    b.close()


def test_generate_with_recycle_reads_the_retrieved_units(model, bank):
    plain = model.generate("And God said", max_new_tokens=8, temperature=0)
    r = model.generate("And God said", max_new_tokens=8, temperature=0, recycle=bank, recycle_k=2)
    assert plain.recycled == [] and 1 <= len(r.recycled) <= 2
    top = r.recycled[0]
    assert top.text == NOTES[2] and top.source == "cell" and top.score > 0.3 and top.tokens > 0
    assert [x.score for x in r.recycled] == sorted((x.score for x in r.recycled), reverse=True)
    want = recycling.with_context("And God said", r.recycled)
    assert r.prompt_tokens == model.tokenizer.encode(want)            # what the model read
    assert len(r.prompt_tokens) > len(plain.prompt_tokens)


def test_budget_k_and_dedup(model, bank):
    tok = model.tokenizer
    got = recycling.recall(bank, "God created the heaven", tok, k=5, budget=10_000)
    assert len({g.id for g in got}) == len(got)
    assert all(g.score >= recycling.MIN_SCORE for g in got)
    small = recycling.recall(bank, "God created the heaven", tok, k=5, budget=got[0].tokens)
    assert [g.id for g in small] == [got[0].id]                        # only the best fits
    assert len(recycling.recall(bank, "God created the heaven", tok, k=1, budget=10_000)) == 1
    inside = recycling.recall(bank, NOTES[0] + " What does it run?", tok, k=5, budget=10_000)
    assert NOTES[0] not in [g.text for g in inside]                    # already in the prompt


def test_recycle_errors(model, bank):
    with pytest.raises(TypeError, match="text prompt"):
        model.generate([1, 2, 3], max_new_tokens=2, recycle=bank)
    with pytest.raises(ValueError, match="recycle_k"):
        model.generate("x", max_new_tokens=2, recycle=bank, recycle_k=0)
    with pytest.raises(ValueError, match="recycle_budget"):
        model.generate("x", max_new_tokens=2, recycle=bank, recycle_budget=-5)
    with pytest.raises(TypeError, match="search"):
        model.generate("x", max_new_tokens=2, recycle="not a bank")


def test_recalled_units_feed_the_lookup_drafter_losslessly(model, bank):
    """The recalled texts are in the context, so prompt lookup drafts from them; the speculative
    greedy output is the plain greedy output of the same recycled prompt."""
    plain = model.generate("And God said", max_new_tokens=24, temperature=0, recycle=bank, recycle_k=3,
                           ignore_eos=True)
    fast = model.generate("And God said", max_new_tokens=24, temperature=0, recycle=bank, recycle_k=3,
                          ignore_eos=True, draft="lookup")
    assert fast.tokens == plain.tokens and fast.prompt_tokens == plain.prompt_tokens
    assert [r.id for r in fast.recycled] == [r.id for r in plain.recycled]
    assert fast.stats.drafter == "lookup" and fast.stats.drafted > 0


def test_chat_with_recycle_puts_units_in_the_user_turn(model, bank):
    s = model.new_session()
    r = s.chat("And God said", 6, temperature=0, system="Be brief.", recycle=bank, recycle_k=2)
    assert 1 <= len(r.recycled) <= 2 and r.recycled[0].text == NOTES[2]
    turn = recycling.with_context("And God said", r.recycled)
    assert s.history[:2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": turn}]
    want = model.tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": turn}],
                                               add_generation_prompt=True, tokenize=False)
    assert r.prompt_tokens == model.tokenizer.encode(want, add_special_tokens=False)
    # the next turn does not put in again what the conversation holds
    r2 = s.chat("And God said, Let there be light", 4, temperature=0, recycle=bank, recycle_k=5)
    assert NOTES[2] not in [x.text for x in r2.recycled]
    # the list form: the history is untouched, the last user message gets the units
    s2 = model.new_session()
    r3 = s2.chat([{"role": "user", "content": "And God said"}], 4, temperature=0, recycle=bank, recycle_k=1)
    assert [x.text for x in r3.recycled] == [NOTES[2]] and s2.history == []
    with pytest.raises(TypeError, match="last message"):
        s2.chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], 2, recycle=bank)


def test_recycle_counts_a_use_only_for_the_units_put_in(model, bank):
    before = {h.id: h.uses for h in bank.list()}
    r = model.generate("And God said", max_new_tokens=2, temperature=0, recycle=bank, recycle_k=1)
    after = {h.id: h.uses for h in bank.list()}
    assert [x.id for x in r.recycled] == [i for i in after if after[i] != before[i]]   # looked at 2, counted 1
    assert after[r.recycled[0].id] == before[r.recycled[0].id] + 1
    assert bank.count_uses([r.recycled[0].id, "00000000-0000-0000-0000-000000000000"]) == 1
