"""A 1024-token context through the notebook surfaces: a random BitNet whose context is 1024
tokens (the bundled demo's tokenizer), driven by `%%ryz` cells: a prompt of 900+ tokens, the KV
prefix reused by the next cell that extends it, the context filling up mid-answer. Real engine,
real model; the answers are checked against the engine's own generate()."""
from pathlib import Path

import numpy as np
import pytest

import ryzjupyter

DEMO = Path(ryzjupyter.__file__).parent / "models" / "demo"
CTX = 1024


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from ryzjupyter.families.random_bitnet import write_random_bitnet
    return write_random_bitnet(tmp_path_factory.mktemp("long") / "ctx1024", hidden_size=128, intermediate_size=256,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                               max_position_embeddings=CTX, seed=11, tokenizer_from=DEMO)


def _text_of(tok, n_tokens, seed=0):
    """Text that the tokenizer reads as about n_tokens tokens (verses of made-up words)."""
    rng = np.random.default_rng(seed)
    words = ["and", "the", "LORD", "said", "unto", "Moses", "river", "stone", "bread", "city", "went", "up",
             "into", "mountain", "people", "of", "Israel", "light", "water", "field"]
    text = ""
    while len(tok.encode(text)) < n_tokens:
        text += " ".join(rng.choice(words, 12)) + ".\n"
    return text


@pytest.fixture
def loaded(ip, long_model):
    ip.run_line_magic("ryz", f"load {long_model} --name long")
    ip.run_line_magic("config", "RyzMagics.temperature = 0")
    ip.run_line_magic("config", "RyzMagics.show_stats = False")
    from ryzjupyter.jupyter.magics import REGISTRY
    return REGISTRY.get("long")


def test_the_model_has_a_1024_token_context(loaded):
    assert loaded.max_context == CTX


def test_a_900_token_prompt_answers_as_the_engine_does(ip, loaded):
    prompt = _text_of(loaded.tokenizer, 900)
    ip.run_cell_magic("ryz", "-n 24 --no-stream --no-chat", prompt)
    r = ip._ryz_magics.last_reply
    assert r.stats.n_prompt >= 900 and r.stats.n_generated == 24
    ids = loaded.tokenizer.encode(prompt.strip())          # a cell's text is stripped
    want = loaded.new_session().generate(ids, 24, temperature=0)
    assert r.tokens == want.tokens and r.finish_reason == want.finish_reason


def test_the_next_cell_reuses_the_kv_prefix(ip, loaded):
    prompt = _text_of(loaded.tokenizer, 900, seed=1)
    ip.run_cell_magic("ryz", "-n 8 --no-stream --no-chat", prompt)
    first = ip._ryz_magics.last_reply
    more = prompt + "And the people went up into the city.\n"
    ip.run_cell_magic("ryz", "-n 8 --no-stream --no-chat", more)
    second = ip._ryz_magics.last_reply
    n_new = second.stats.n_prompt - first.stats.n_prompt
    assert 0 < n_new < 20
    # the first cell's prompt stays in the cache: only the new text (and at most a boundary
    # token or two that tokenizes differently) runs through the model
    assert second.stats.n_cached >= first.stats.n_prompt - 2
    assert second.stats.n_prefill <= n_new + 2
    want = loaded.new_session().generate(loaded.tokenizer.encode(more.strip()), 8, temperature=0)
    assert second.tokens == want.tokens


def test_an_answer_that_fills_the_context_stops_at_1024(ip, loaded):
    prompt = _text_of(loaded.tokenizer, 1000, seed=2)
    n_prompt = len(loaded.tokenizer.encode(prompt.strip()))
    assert n_prompt < CTX
    ip.run_cell_magic("ryz", "-n 200 --no-stream --no-chat", prompt)
    r = ip._ryz_magics.last_reply
    want = loaded.new_session().generate(loaded.tokenizer.encode(prompt.strip()), 200, temperature=0)
    assert r.tokens == want.tokens and r.finish_reason == want.finish_reason == "context"
    # every token but the last one sampled ran through the model: the cache's 1024 rows are full
    assert r.stats.n_prompt + r.stats.n_generated == CTX + 1
