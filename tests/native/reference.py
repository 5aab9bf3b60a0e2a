"""numpy references for the C kernels: the independent specification every ISA
variant is compared with. Written for clarity, not speed."""
import numpy as np


def quantize_rows_i8(x: np.ndarray):
    """BitNet per-token absmax int8: s = 127/max(|x|, 1e-5); q = clamp(round_half_even(x*s))."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.max(np.abs(x), axis=-1, initial=0.0).astype(np.float32)
    s = (np.float32(127.0) / np.maximum(amax, np.float32(1e-5))).astype(np.float32)
    q = np.clip(np.rint(x * s[..., None]), -128, 127).astype(np.int8)  # np.rint: ties to even
    return q, s
