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


# ---- ternary (BitNet b1.58) -------------------------------------------------------------

def i2_row_bytes(K: int) -> int:
    """I2 layout: K padded to a multiple of 256, four 2-bit codes a byte."""
    return -(-K // 256) * 64


def pack_i2(trits: np.ndarray) -> np.ndarray:
    """I2 layout written from its definition: byte j of block b, bits 2i..2i+1 hold
    code t[256 b + 64 i + j] + 1 (padding trits are 0, code 1)."""
    trits = np.asarray(trits, np.int8)
    N, K = trits.shape
    Kp = -(-K // 256) * 256
    codes = np.ones((N, Kp), np.uint8)
    codes[:, :K] = trits + 1
    c = codes.reshape(N, Kp // 256, 4, 64)  # [n, block, i, j]
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return packed.reshape(N, Kp // 4).astype(np.uint8)


def tl_row_bytes(K: int) -> int:
    return -(-K // 4)


def pack_tl(trits: np.ndarray) -> np.ndarray:
    """TL layout: pair g = (t[2g], t[2g+1]) -> index 3 (t0 + 1) + (t1 + 1); byte c of a row
    holds pair 2c in the low nibble and pair 2c+1 in the high nibble; K padded with zeros to
    4. Rows are interleaved in tiles of 64 (last tile: the remaining h rows): within a tile,
    the bytes are stored column by column, byte c of the tile's rows side by side."""
    trits = np.asarray(trits, np.int8)
    N, K = trits.shape
    Kp = -(-K // 4) * 4
    t = np.zeros((N, Kp), np.int16)
    t[:, :K] = trits
    idx = 3 * (t[:, 0::2] + 1) + (t[:, 1::2] + 1)  # [N, Kp/2]
    rows = (idx[:, 0::2] | (idx[:, 1::2] << 4)).astype(np.uint8)  # [N, rb] row-major
    out = np.empty(N * rows.shape[1], np.uint8)
    for n0 in range(0, N, 64):
        tile = rows[n0:n0 + 64]  # [h, rb]
        out[n0 * rows.shape[1]:(n0 + tile.shape[0]) * rows.shape[1]] = tile.T.ravel()
    return out.reshape(N, rows.shape[1])


def ternary_matmul(trits: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact sum_k t[n, k] q[m, k] as int32 [M, N] (computed in int64)."""
    acc = np.asarray(q, np.int64) @ np.asarray(trits, np.int64).T
    return acc.astype(np.int32)


def ternary_linear(trits: np.ndarray, x: np.ndarray, w_mult: float) -> np.ndarray:
    """BitNet linear: q, s = quantize_rows_i8(x); out = float32(acc) / s[m] * w_mult (fp32)."""
    q, s = quantize_rows_i8(x)
    acc = ternary_matmul(trits, q).astype(np.float32)
    return (acc / s[:, None]) * np.float32(w_mult)


def unpack_bitnet_packed(packed: np.ndarray) -> np.ndarray:
    """transformers' unpack_weights, element by element: W[i*R + r, c] = ((p[r, c] >> 2i) & 3) - 1."""
    R, K = packed.shape
    W = np.empty((4 * R, K), np.int8)
    for i in range(4):
        for r in range(R):
            W[i * R + r] = ((packed[r].astype(np.int16) >> (2 * i)) & 3) - 1
    return W


def pack_bitnet(trits: np.ndarray) -> np.ndarray:
    """transformers' pack_weights: inverse of unpack_bitnet_packed (out rows divisible by 4)."""
    N, K = trits.shape
    R = N // 4
    p = np.zeros((R, K), np.uint8)
    for i in range(4):
        p |= ((trits[i * R:(i + 1) * R].astype(np.int16) + 1) << (2 * i)).astype(np.uint8)
    return p


def absmean_ternary(w: np.ndarray):
    """transformers WeightQuant in float32: s = 1 / clamp(mean|W|, 1e-5); t = clamp(round(W s), -1, 1)."""
    w = np.asarray(w, np.float32)
    mean = np.float32(np.mean(np.abs(w), dtype=np.float64))
    s = np.float32(1.0) / np.maximum(mean, np.float32(1e-5))
    t = np.clip(np.rint(w * s), -1, 1).astype(np.int8)
    return t, s


# ---- dense matmul ----------------------------------------------------------------------------

def matmul_i8(xq, xs, wq, ws):
    """out = float32(exact int sum) / (xs[m] * ws[n]), in float32."""
    acc = (np.asarray(xq, np.int64) @ np.asarray(wq, np.int64).T).astype(np.float32)
    return acc / (np.asarray(xs, np.float32)[:, None] * np.asarray(ws, np.float32)[None, :])


def matmul_f32_with_bound(x, w):
    """x @ w.T in float64 and the float32 error bound K * 2^-24 * (|x| @ |w|.T) (Higham's
    bound for any summation order, with FMA: every product is exact before rounding)."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    K = x64.shape[1]
    return x64 @ w64.T, (K + 1) * 2.0**-24 * (np.abs(x64) @ np.abs(w64).T)
