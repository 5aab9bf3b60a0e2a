import pytest

from ryzjupyter.engine.kv_cache import KVCache


def test_prefix_reuse_and_truncate():
    c = KVCache(2, 16, 2, 4)
    c.append([1, 2, 3, 4])
    assert c.common_prefix([1, 2, 9]) == 2
    assert c.reuse([1, 2, 3, 4, 5, 6]) == 4          # extends: keep all
    assert c.reuse([1, 2, 3, 4]) == 3                # same prompt: rerun the last token for logits
    assert c.tokens == [1, 2, 3]
    assert c.reuse([7, 8]) == 0 and c.tokens == []
    c.append([5] * 16)
    with pytest.raises(ValueError, match="overflow"):
        c.append([1])
    assert c.k[0].shape == (16, 2, 4)
