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
