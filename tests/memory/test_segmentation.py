"""Cutting a text into RSUs: sentence boundaries, neighbours joined while on one subject, a cut where
the subject changes, the token budget, over-long sentences split into whole words."""
import pytest

from ryzjupyter.memory.embedding import get_encoder
from ryzjupyter.memory.segmentation import segment, split_sentences

ARK = ("Noah built an ark of gopher wood. The ark had three decks and a door in its side. "
       "Noah brought the animals into the ark two by two.")
CSV = "The csv module reads comma separated values. A csv.reader iterates over the rows of a file."


@pytest.fixture(scope="module")
def enc():
    return get_encoder()


def test_split_sentences():
    assert split_sentences("One. Two! Three? Four:  five\n\nSix\nseven.") == \
        ["One.", "Two!", "Three?", "Four:", "five", "Six\nseven."]
    assert split_sentences("  \n\n ") == []


def test_neighbours_on_one_subject_join_and_a_new_subject_cuts(enc):
    units = segment(ARK + "\n\n" + CSV, enc, threshold=0.3, max_tokens=128)
    assert units == [ARK, CSV]


def test_threshold_and_budget(enc):
    assert len(segment(ARK, enc, threshold=1.01)) == 3           # nothing joins
    small = segment(ARK + " " + CSV, enc, threshold=-1.0, max_tokens=20)
    assert all(len(enc.tokenize([u])[0]) - 2 <= 20 for u in small) and len(small) > 1
    assert " ".join(small).split() == (ARK + " " + CSV).split()   # every word kept, in order


def test_long_sentence_is_cut_into_words(enc):
    long = " ".join(f"word{i}" for i in range(400))
    units = segment(long, enc, max_tokens=32)
    assert len(units) > 5 and " ".join(units).split() == long.split()
    assert all(len(enc.tokenize([u])[0]) - 2 <= 32 for u in units)
    with pytest.raises(ValueError, match="max_tokens"):
        segment(long, enc, max_tokens=4)
    assert segment("", enc) == [] and segment("Just one.", enc) == ["Just one."]
