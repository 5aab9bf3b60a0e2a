"""ryzjupyter.embed: all-MiniLM-L6-v2 on our kernels against sentence-transformers (torch, fp32).

Every ISA level, on texts that include the empty string, whitespace, accents and scripts the
WordPiece vocabulary splits oddly, and texts longer than the 256-token limit (truncated as
sentence-transformers truncates them). The bar is cosine >= 0.9999 for every text.
"""
import numpy as np
import pytest

import ryzjupyter
from ryzjupyter.families.bert import Encoder, resolve_encoder_path
from ryzjupyter.memory.embedding import get_encoder

TEXTS = [
    "",
    " ",
    "hello",
    "The asyncio event loop runs asynchronous tasks and callbacks.",
    "naïve café: ÜBER straße, 日本語のテキスト, emoji 🙂 and tabs\tand\nnewlines",
    "How do I open a file for reading and writing in Python? " * 40,   # ~560 tokens: truncated
    "x" * 5000,                                                          # one huge word
] + [f"Sentence {i}: the quick brown fox number {i} jumps over {i % 7} lazy dogs." for i in range(4)]


@pytest.fixture(scope="module")
def reference():
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is in the ci extra")
    torch = pytest.importorskip("torch", reason="torch is in the ci extra")
    torch.set_num_threads(2)
    model = st.SentenceTransformer(str(resolve_encoder_path()), device="cpu")
    assert model.max_seq_length == 256
    return model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)


def test_equals_sentence_transformers_on_every_isa(isa, reference):
    got = ryzjupyter.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    cos = (got * reference).sum(1)
    assert cos.min() >= 0.9999, dict(zip(TEXTS, cos))


def test_long_texts_are_truncated_at_256_tokens():
    enc = get_encoder()
    ids = enc.tokenize([TEXTS[5], TEXTS[2]])
    assert len(ids[0]) == 256 and ids[0][0] == 101 and ids[0][-1] == 102    # [CLS] ... [SEP]
    more = TEXTS[5] + " and then something else entirely different at the end"
    np.testing.assert_array_equal(ryzjupyter.embed(TEXTS[5]), ryzjupyter.embed(more))


def test_order_and_batching_do_not_change_a_vector(threads):
    one = np.stack([ryzjupyter.embed(t)[0] for t in TEXTS[:6]])
    together = ryzjupyter.embed(list(reversed(TEXTS[:6])))[::-1]
    np.testing.assert_allclose(one, together, atol=1e-6)
    small = get_encoder().encode(TEXTS[:6], batch_tokens=1)    # one text per forward call
    np.testing.assert_allclose(small, together, atol=1e-6)


def test_similar_texts_are_closer_than_unrelated_ones():
    a, b, c = ryzjupyter.embed(["How do I read a file in Python?", "Opening and reading files with Python",
                                "The recipe needs two eggs and flour"])
    assert a @ b > a @ c + 0.3


def test_inputs_and_errors(tmp_path):
    assert ryzjupyter.embed("one text").shape == (1, 384)
    assert ryzjupyter.embed([]).shape == (0, 384)
    assert ryzjupyter.embed(t for t in ["a", "b"]).shape == (2, 384)
    with pytest.raises(TypeError, match="texts\\[1\\] is int"):
        ryzjupyter.embed(["a", 3])
    with pytest.raises(TypeError, match="not bytes"):
        ryzjupyter.embed(b"bytes")
    with pytest.raises(TypeError, match="str or a sequence"):
        ryzjupyter.embed(42)
    with pytest.raises(ValueError, match="does not exist"):
        ryzjupyter.embed("a", model=str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not a BERT encoder"):
        ryzjupyter.embed("a", model=str(tmp_path))


def test_model_given_as_a_folder_or_encoder():
    folder = resolve_encoder_path()
    enc = Encoder(folder)
    np.testing.assert_array_equal(ryzjupyter.embed("abc", model=enc), ryzjupyter.embed("abc", model=str(folder)))
