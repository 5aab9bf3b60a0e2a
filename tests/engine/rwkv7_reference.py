"""RWKV-7 written from the paper's formulas (RWKV-7 "Goose", arXiv 2503.14456, and the reference
demo in BlinkDL/RWKV-LM, RWKV-v7/rwkv_v7_demo.py) in float64 numpy, one token at a time, reading
the RWKV-LM tensor names straight from the safetensors file. Independent of ryzjupyter's engine:
the tests compare the engine with it."""
import json
import struct

import numpy as np


def load_file(path):
    """The tensors of a safetensors file as float64 (F32, F16 and BF16; read by hand)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        buf = raw[8 + n + a:8 + n + b]
        if h["dtype"] == "BF16":
            arr = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, {"F32": np.float32, "F16": np.float16}[h["dtype"]])
        out[name] = arr.astype(np.float64).reshape(h["shape"])
    return out


def _f64(sd, name):
    return sd[name]


def layer_norm(x, w, b, eps):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / np.sqrt(var + eps) * w + b


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logits(folder, ids):
    """float64 logits [len(ids), vocab] of the RWKV-7 model in `folder`."""
    cfg = json.loads((folder / "config.json").read_text())
    sd = load_file(str(folder / "model.safetensors"))
    g = lambda n: _f64(sd, n)  # noqa: E731
    D, L, N = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["head_size"]
    H = D // N
    eps, gn_eps = cfg.get("norm_eps", 1e-5), cfg.get("group_norm_eps", 64e-5)
    att_x = [np.zeros(D) for _ in range(L)]
    ffn_x = [np.zeros(D) for _ in range(L)]
    S = [np.zeros((H, N, N)) for _ in range(L)]
    out = []
    for tok in ids:
        x = g("emb.weight")[tok]
        v_first = None
        for l in range(L):
            a, f = f"blocks.{l}.att.", f"blocks.{l}.ffn."
            if l == 0:
                x = layer_norm(x, g("blocks.0.ln0.weight"), g("blocks.0.ln0.bias"), eps)
            xx = layer_norm(x, g(f"blocks.{l}.ln1.weight"), g(f"blocks.{l}.ln1.bias"), eps)
            # time mixing: token shift, then the six interpolations
            dx = att_x[l] - xx
            att_x[l] = xx
            xr, xw, xk, xv, xa, xg = (xx + dx * g(a + "x_" + n).reshape(D) for n in "rwkvag")
            r = g(a + "receptance.weight") @ xr
            k = g(a + "key.weight") @ xk
            v = g(a + "value.weight") @ xv
            w = np.tanh(xw @ g(a + "w1")) @ g(a + "w2")
            alpha = sigmoid(g(a + "a0").reshape(D) + (xa @ g(a + "a1")) @ g(a + "a2"))
            gate = sigmoid(xg @ g(a + "g1")) @ g(a + "g2")
            kk = (k * g(a + "k_k").reshape(D)).reshape(H, N)
            kk = (kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)).reshape(D)
            k = k * (1 + (alpha - 1) * g(a + "k_a").reshape(D))
            if l == 0:
                v_first = v
            else:
                v = v + (v_first - v) * sigmoid(g(a + "v0").reshape(D) + (xv @ g(a + "v1")) @ g(a + "v2"))
            decay = np.exp(-np.exp(-0.5) * sigmoid(g(a + "w0").reshape(D) + w))
            # the state: S_t = S_{t-1} (diag(w) - kk^T (a * kk)) + v^T k, per head, S [value, key]
            y = np.zeros(D)
            for h in range(H):
                s = slice(h * N, (h + 1) * N)
                trans = np.diag(decay[s]) - np.outer(kk[s], alpha[s] * kk[s])
                S[l][h] = S[l][h] @ trans + np.outer(v[s], k[s])
                y[s] = S[l][h] @ r[s]
            yh = y.reshape(H, N)
            yh = (yh - yh.mean(-1, keepdims=True)) / np.sqrt(yh.var(-1, keepdims=True) + gn_eps)
            y = yh.reshape(D) * g(a + "ln_x.weight") + g(a + "ln_x.bias")
            bonus = (r * k * g(a + "r_k").reshape(D)).reshape(H, N).sum(-1, keepdims=True)
            y = y + (bonus * v.reshape(H, N)).reshape(D)
            x = x + g(a + "output.weight") @ (y * gate)
            # channel mixing
            xx = layer_norm(x, g(f"blocks.{l}.ln2.weight"), g(f"blocks.{l}.ln2.bias"), eps)
            dx = ffn_x[l] - xx
            ffn_x[l] = xx
            kf = np.maximum(g(f + "key.weight") @ (xx + dx * g(f + "x_k").reshape(D)), 0) ** 2
            x = x + g(f + "value.weight") @ kf
        x = layer_norm(x, g("ln_out.weight"), g("ln_out.bias"), 1e-5)
        out.append(g("head.weight") @ x)
    return np.stack(out)
