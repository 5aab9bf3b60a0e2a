import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
TINY_TOK = DATA / "tiny_tok"
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "bitnet"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ryzjupyter.engine.tokenizer import Tokenizer
    return Tokenizer.from_pretrained(TINY_TOK)


from ryzjupyter.decoding.generation import LanguageModel  # noqa: E402
from ryzjupyter.engine.kv_cache import KVCache  # noqa: E402


class ToyLM(LanguageModel):
    """A test double for an engine: logits are a fixed random function of (previous token,
    current token, position), computed token by token so that a batched prefill and one-token
    decoding agree exactly. It counts the tokens it runs. Not a language model; it exists to
    test the generation machinery without the native kernels."""

    def __init__(self, tokenizer, max_context=64, seed=0):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.max_context = max_context
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((self.vocab_size, self.vocab_size)).astype(np.float32) * 3
        self.pos_table = rng.standard_normal((max_context, self.vocab_size)).astype(np.float32)
        self.forward_calls = []

    def new_cache(self, max_len=None):
        return KVCache(1, max_len or self.max_context, 1, 1)

    def forward(self, token_ids, cache, all_logits=False):
        ids = [int(t) for t in token_ids]
        assert len(cache.tokens) + len(ids) <= cache.max_len
        self.forward_calls.append(len(ids))
        out = []
        prev = cache.tokens[-1] if cache.tokens else 0
        for i, t in enumerate(ids):
            pos = len(cache.tokens) + i
            out.append(self.table[t] + 0.5 * self.table[prev][::-1] + self.pos_table[pos])
            prev = t
        cache.append(ids)
        out = np.stack(out).astype(np.float32)
        return out if all_logits else out[-1:]


@pytest.fixture
def toy_lm(tiny_tokenizer):
    return ToyLM(tiny_tokenizer)


@pytest.fixture(scope="session", autouse=True)
def _converted_cache_in_tmp(tmp_path_factory):
    """Converted-weight caches go to a temporary folder, never to ~/.cache."""
    old = os.environ.get("RYZ_CACHE_DIR")
    os.environ["RYZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("ryz-cache"))
    yield
    if old is None:
        os.environ.pop("RYZ_CACHE_DIR", None)
    else:
        os.environ["RYZ_CACHE_DIR"] = old
