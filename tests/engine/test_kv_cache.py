import numpy as np
import pytest

from ryzjupyter.engine.kv_cache import KVCache, common_prefix


def test_common_prefix_of_any_id_sequences():
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3 and common_prefix([1, 2, 3, 4], [1, 2]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([5, 2], [4, 2]) == 0
    assert common_prefix(np.array([1, 2, 3], np.int32), (1, 2, 7)) == 2


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


@pytest.mark.parametrize("fmt,dtype,row_bytes", [("f32", "float32", 16), ("f16", "float16", 8),
                                                 ("bf16", "uint16", 8), ("int8", "int8", 8)])
def test_formats_store_and_bytes(fmt, dtype, row_bytes):
    import numpy as np
    c = KVCache(2, 8, 2, 4, fmt)
    assert c.k[1].dtype == np.dtype(dtype) and c.v[0].shape == (8, 2, 4)
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(3, 2, 4)
    c.store(1, 2, x, -x)
    if fmt == "f16":
        np.testing.assert_array_equal(c.k[1][2:5], x.astype(np.float16))
    elif fmt == "bf16":         # the top half of the float32 bits, rounded: within half an ulp, 2^-8 relative
        back = (c.k[1][2:5].astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_allclose(back, x, rtol=2.0 ** -8, atol=0)
    elif fmt == "f32":
        np.testing.assert_array_equal(c.v[1][2:5], -x)
    assert not c.k[0].any() and not c.k[1][:2].any()
    c.append([1, 2, 3])
    assert c.nbytes == 2 * 2 * 3 * 2 * row_bytes


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match=r"kv_cache must be 'f32'.*'f16' or 'bf16'.*'int8'.*got 'fp8'"):
        KVCache(1, 4, 1, 4, "fp8")
