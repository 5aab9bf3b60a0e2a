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


# ======================================================================================
# Float kernels (ops, attention, recurrent): float64 re-implementations of the formulas
# transformers uses. Inputs are float32; angles/intermediates torch keeps in float32
# are rounded to float32 here too where that changes results beyond the tolerances.
# ======================================================================================


def rmsnorm(x, w, eps):
    """transformers RMSNorm: x * rsqrt(mean(x^2) + eps) * w."""
    x = np.asarray(x, np.float64)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * np.asarray(w, np.float64)


def rope_inv_freq(hd, theta):
    """float32 as torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), with the power
    rounded correctly (float64 pow, one rounding); torch's Sleef powf is within 1 ulp of it."""
    expo = (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / np.float32(hd)).astype(np.float32)
    pw = (np.float64(np.float32(theta)) ** expo.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / pw).astype(np.float32)


def rope(x, positions, theta):
    """HF rotate_half RoPE on x [M, H, hd]; the angle float32(pos) * inv_freq is float32
    like in transformers (it matters: at pos 4000 the angle's float32 rounding is ~2e-4)."""
    x = np.asarray(x, np.float64)
    hd = x.shape[-1]
    ang = (np.asarray(positions).astype(np.float32)[:, None] * rope_inv_freq(hd, theta)[None, :]).astype(np.float32)
    cos = np.cos(ang.astype(np.float64))[:, None, :]
    sin = np.sin(ang.astype(np.float64))[:, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def softmax(x):
    """Row softmax; a row that is entirely -inf gives zeros (the kernels' documented rule)."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for i, row in enumerate(x):
        if row.size == 0 or np.all(row == -np.inf):
            continue
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out


def silu(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def layernorm(x, w, b, eps):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    """Exact GELU: x * Phi(x) = x/2 (1 + erf(x / sqrt 2)), float64 (math.erf per element)."""
    import math
    x = np.asarray(x, np.float64)
    return x * 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))


def attention_segments(q, k, v, offsets, scale):
    """Bidirectional attention of every row with the rows of its own segment, float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros_like(q)
    for s in range(len(offsets) - 1):
        a, b = offsets[s], offsets[s + 1]
        sc = np.einsum("ihd,jhd->hij", q[a:b], k[a:b]) * scale
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[a:b] = np.einsum("hij,jhd->ihd", p, v[a:b])
    return out


def relu2(x):
    return np.maximum(np.asarray(x, np.float64), 0.0) ** 2


def attention(q, k, v, n_past, scale):
    """transformers eager attention with repeat_kv and a causal mask, float64:
    query row i sits at position n_past + i and sees cache rows 0..n_past+i."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    v = np.asarray(v, np.float64)
    M, Hq, hd = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    out = np.zeros((M, Hq, hd))
    for h in range(Hq):
        kh, vh = k[:, h // G], v[:, h // G]
        for i in range(M):
            L = n_past + i + 1
            s = kh[:L] @ q[i, h] * scale
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ vh[:L]
    return out


def mamba_conv1d(x, state, w, bias):
    """Mamba causal depthwise conv + SiLU over x [T, D] continuing from state [D, K]
    (the last K inputs, oldest first). Returns (out [T, D], new state [D, K])."""
    x = np.asarray(x, np.float64)
    state = np.asarray(state, np.float64)
    w = np.asarray(w, np.float64)
    T, D = x.shape
    K = w.shape[1]
    full = np.concatenate([state.T, x], axis=0)  # row f holds input s = f - K
    out = np.zeros((T, D))
    for t in range(T):
        out[t] = np.sum(w * full[t + 1:t + 1 + K].T, axis=1)
        if bias is not None:
            out[t] += np.asarray(bias, np.float64)
    return silu(out), full[-K:].T.copy()


def softplus(x):
    """torch.nn.functional.softplus(beta=1, threshold=20)."""
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def mamba_scan(h, u, dt, A, B, C, D, z):
    """transformers MambaMixer.slow_forward scan: u, dt, z [T, Di]; B, C [T, N];
    h [Di, N]; A [Di, N]; D [Di]. Returns (y [T, Di], new h)."""
    f = lambda a: np.asarray(a, np.float64)
    h, u, dt, A, B, C, D = map(f, (h, u, dt, A, B, C, D))
    d = softplus(dt)
    ys = []
    for t in range(u.shape[0]):
        dA = np.exp(A * d[t][:, None])
        h = dA * h + (d[t][:, None] * B[t][None, :]) * u[t][:, None]
        ys.append(h @ C[t] + u[t] * D)
    y = np.array(ys).reshape(u.shape)
    if z is not None:
        y = y * silu(z)
    return y, h


def rwkv4_wkv(aa, bb, pp, k, v, time_decay, time_first):
    """transformers rwkv_linear_attention_cpu: k, v [T, A]; state aa, bb, pp [A].
    Returns (out [T, A], aa, bb, pp)."""
    f = lambda a: np.asarray(a, np.float64).copy()
    aa, bb, pp, k, v, time_decay, u = map(f, (aa, bb, pp, k, v, time_decay, time_first))
    w = -np.exp(time_decay)
    out = np.zeros_like(k)
    for t in range(k.shape[0]):
        q = np.maximum(pp, u + k[t])
        e1, e2 = np.exp(pp - q), np.exp(u + k[t] - q)
        out[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        q = np.maximum(pp + w, k[t])
        e1, e2 = np.exp(pp + w - q), np.exp(k[t] - q)
        aa, bb, pp = e1 * aa + e2 * v[t], e1 * bb + e2, q
    return out, aa, bb, pp


def quantize_kv_i8(x):
    """int8 KV cache rows: per (row, head) d = max|x|/127, q = clip(rint(x * (127/max|x|)), -127, 127)
    in float32 (an all-zero row: d = 0, q = 0). Returns (q int8, d float32)."""
    x = np.asarray(x, np.float32)
    amax = np.max(np.abs(x), axis=-1)
    safe = np.where(amax > 0, amax, np.float32(1)).astype(np.float32)
    s = (np.float32(127.0) / safe).astype(np.float32)
    q = np.clip(np.rint(x * s[..., None]), -127, 127).astype(np.int8)
    q[amax == 0] = 0
    d = np.where(amax > 0, (amax / np.float32(127.0)).astype(np.float32), np.float32(0)).astype(np.float32)
    return q, d


# ---- ternary (BitNet b1.58) -------------------------------------------------------------

def i2_row_bytes(K: int) -> int:
    """I2 layout: K padded to a multiple of 256, four 2-bit codes a byte."""
    return -(-K // 256) * 64


def pack_i2(trits: np.ndarray) -> np.ndarray:
    """I2 layout written from its definition: in a row, byte j of block b, bits 2i..2i+1 hold
    code t[256 b + 64 i + j] + 1 (padding trits are 0, code 1); rows are interleaved block by
    block in tiles of 4 (the last tile has N % 4 rows if that is not 0): block b of row n of
    the tile starting at n0 with h rows is at n0 * rb + (b h + n - n0) * 64."""
    trits = np.asarray(trits, np.int8)
    N, K = trits.shape
    Kp = -(-K // 256) * 256
    codes = np.ones((N, Kp), np.uint8)
    codes[:, :K] = trits + 1
    c = codes.reshape(N, Kp // 256, 4, 64)  # [n, block, i, j]
    rows = (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).astype(np.uint8)
    packed = np.empty((N, Kp // 4), np.uint8)
    flat = packed.reshape(-1)
    rb = Kp // 4
    for n0 in range(0, N, 4):
        h = min(4, N - n0)
        tile = rows[n0:n0 + h].transpose(1, 0, 2)  # [block, row, j]
        flat[n0 * rb:(n0 + h) * rb] = tile.reshape(-1)
    return packed


def t5_row_bytes(K: int) -> int:
    """T5 layout: K padded to a multiple of 320, five base-3 codes a byte."""
    return -(-K // 320) * 64


def pack_t5(trits: np.ndarray) -> np.ndarray:
    """T5 layout from its definition: byte j of block b holds the codes c_i =
    t[320 b + 64 i + j] + 1 (i = 0..4, padding code 1) as v = sum_i c_i 3^(4-i),
    stored as ceil(256 v / 243)."""
    trits = np.asarray(trits, np.int8)
    N, K = trits.shape
    Kp = -(-K // 320) * 320
    codes = np.ones((N, Kp), np.int64)
    codes[:, :K] = trits + 1
    c = codes.reshape(N, Kp // 320, 5, 64)  # [n, block, i, j]
    v = sum(c[:, :, i] * 3 ** (4 - i) for i in range(5))
    return ((256 * v + 242) // 243).reshape(N, Kp // 5).astype(np.uint8)


def unpack_t5(packed: np.ndarray, K: int) -> np.ndarray:
    """Inverse of pack_t5 by the base-3 digits of round(243 byte / 256)."""
    p = np.asarray(packed, np.int64)
    N = p.shape[0]
    v = (243 * p) >> 8  # floor(243 ceil(256 v / 243) / 256) = v
    digits = np.stack([(v // 3 ** (4 - i)) % 3 for i in range(5)], axis=2)  # [n, Kp/5, 5]
    Kp = p.shape[1] * 5
    d = digits.reshape(N, Kp // 320, 64, 5).transpose(0, 1, 3, 2).reshape(N, Kp)
    return (d[:, :K] - 1).astype(np.int8)


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


# ======================================================================================
# 4-bit lm_head (head4.h): quantization, packing and the GEMV's exact result
# ======================================================================================


def quantize_head4(w, G):
    """Float head w [V, K] -> (packed uint8 [T, ng, 8G], scales uint16 [T, ng, 16],
    q int8 [16T, ng*G] (logical, padded), d float32 [16T, ng]), as head4.h specifies."""
    w = np.asarray(w, np.float32)
    V, K = w.shape
    T, ng = -(-V // 16), -(-K // G)
    wp = np.zeros((16 * T, ng * G), np.float32)
    wp[:V, :K] = w
    g = wp.reshape(16 * T, ng, G)
    amax = np.abs(g).max(axis=2)
    d16 = (amax / np.float32(7)).astype(np.float32).astype(np.float16)
    d = d16.astype(np.float32)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d > 0)
    q = np.clip(np.rint(g * inv[..., None]), -7, 7).astype(np.int8)          # ties to even
    u = (q.astype(np.int16) + 8).astype(np.uint8).reshape(T, 16, ng, G)
    lo = u[..., :G // 2].reshape(T, 16, ng, G // 8, 4)
    hi = u[..., G // 2:].reshape(T, 16, ng, G // 8, 4)
    byte = lo | (hi << 4)                                                    # [t, r, g, p, i]
    packed = np.ascontiguousarray(byte.transpose(0, 2, 3, 1, 4)).reshape(T, ng, 8 * G)
    scales = np.ascontiguousarray(d16.view(np.uint16).reshape(T, 16, ng).transpose(0, 2, 1))
    return packed, scales, q.reshape(16 * T, ng * G), d


def lm_head_i4(xq, xs, q, d, V, G):
    """out[m, n] = (sum over groups in order of f32(isum) * d, f32 steps) / xs[m]."""
    M, K = xq.shape
    Kp = q.shape[1]
    ng = Kp // G
    x = np.zeros((M, Kp), np.int64)
    x[:, :K] = xq
    isum = np.einsum("mgk,ngk->mng", x.reshape(M, ng, G), q[:V].astype(np.int64).reshape(V, ng, G))
    acc = np.zeros((M, V), np.float32)
    for g in range(ng):
        acc = (acc + (isum[:, :, g].astype(np.float32) * d[None, :V, g]).astype(np.float32)).astype(np.float32)
    return (acc / np.asarray(xs, np.float32)[:, None]).astype(np.float32)


def round_kv16(x, fmt):
    """16-bit KV cache rows: x float32 rounded to the nearest float16 ("f16": numpy's cast) or
    bfloat16 ("bf16": 8 significant bits, ties to even, computed with frexp/rint in float64, not
    with bit tricks), returned as (bits uint16, the rounded values as float32). Normal numbers
    for bf16 (the tests' range)."""
    x = np.asarray(x, np.float32)
    if fmt == "f16":
        h = x.astype(np.float16)
        return h.view(np.uint16), h.astype(np.float32)
    m, e = np.frexp(x.astype(np.float64))                      # x = m 2^e, 0.5 <= |m| < 1
    r = np.ldexp(np.rint(m * 256.0), e - 8).astype(np.float32)  # 8 significant bits, ties to even
    return (r.view(np.uint32) >> 16).astype(np.uint16), r
