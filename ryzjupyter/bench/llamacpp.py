"""llama.cpp on the same random weights, for ``python -m ryzjupyter.bench model --vs llamacpp``.

Needs the ``[bench]`` extra: ``gguf`` (writes the file) and ``llama-cpp-python`` (runs it).

* :func:`write_gguf` converts a random BitNet folder written by ``ryzjupyter.families.random_bitnet``
  (uint8 packed trits + ``weight_scale``, bf16 embedding tied as lm_head) into a GGUF with
  exactly the same trits: every ternary linear as **TQ2_0** (2.0625 bpw: 64 bytes of 2-bit
  codes + one f16 scale per 256 weights; the scale is the tensor's ``1/weight_scale``), the
  embedding as **Q8_0** (tied: llama.cpp uses it as the output matrix, as our int8 lm_head
  is the same embedding quantized per row), norms f32. Architecture ``bitnet`` (llama.cpp's
  BitNet b1.58 graph: sub-norms, relu^2 FFN); ``arch="llama"`` writes the plain LLaMA graph
  (SiLU-gated FFN, no sub-norms) instead, with the same tensors less the sub-norms: the
  linear layers and the lm_head, which are the time, are identical. A minimal SentencePiece
  vocabulary (``<unk> <s> </s>``, 256 byte tokens, then placeholders) is written: only the
  timing of this side matters, the token ids are fed directly.
* :class:`Worker` runs llama.cpp in a child process (``python -m ryzjupyter.bench.llamacpp
  --worker``, possibly another interpreter: ``--llamacpp-python``) that answers one timing
  request per line, so the benchmark alternates ours and theirs in one command.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

GGUF_VERSION_TAG = "ryz-bench-gguf-2"


# ---- GGUF writer (parent side; needs numpy + gguf) ------------------------------------------

def tq2_0_blocks(trits, d: float):
    """int8 trits [N, K] (K % 256 == 0) -> uint8 [N, K/256*66] in ggml's block_tq2_0 layout:
    qs[64] then f16 d; byte j*32+m of qs holds element j*128 + n*32 + m in bits 2n (codes t+1)."""
    import numpy as np
    N, K = trits.shape
    if K % 256:
        raise ValueError(f"TQ2_0 needs rows that are a multiple of 256 long, got {K}")
    nb = K // 256
    codes = (trits.astype(np.int8) + 1).astype(np.uint8).reshape(N, nb, 2, 4, 32)
    qs = codes[:, :, :, 0] | (codes[:, :, :, 1] << 2) | (codes[:, :, :, 2] << 4) | (codes[:, :, :, 3] << 6)
    out = np.empty((N, nb, 66), np.uint8)
    out[:, :, :64] = qs.reshape(N, nb, 64)
    out[:, :, 64:] = np.array([d], np.float16).view(np.uint8)
    return out.reshape(N, nb * 66)


def tq2_0_dequant(blocks, K):
    """Inverse of :func:`tq2_0_blocks` (for tests): float32 [N, K]."""
    import numpy as np
    N = blocks.shape[0]
    nb = K // 256
    b = blocks.reshape(N, nb, 66)
    qs = b[:, :, :64].reshape(N, nb, 2, 1, 32)
    d = b[:, :, 64:].copy().view(np.float16).astype(np.float32)          # [N, nb, 1]
    codes = (qs >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 1, 4, 1)) & 3   # [N, nb, 2, 4, 32]
    t = codes.astype(np.float32).reshape(N, nb, 256) - 1
    return (t * d).reshape(N, K)


def write_gguf(folder, path, arch="bitnet", progress=None) -> Path:
    """Write the random BitNet model in `folder` as a GGUF at `path` (see the module doc)."""
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as QT
    from ryzjupyter.engine.checkpoint import Checkpoint, to_f32
    from ryzjupyter.engine.ternary import trits_from_bitnet_packed

    folder, path = Path(folder), Path(path)
    ck = Checkpoint(folder)
    cfg = ck.config
    D, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    H, KVH, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    qc = cfg.get("quantization_config") or {}
    if qc.get("quantization_mode") != "offline" or qc.get("linear_class") != "bitlinear":
        raise ValueError("write_gguf converts the packed (bitlinear, offline) random models only")
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(f"ryzjupyter random bitnet {folder.name}")
    w.add_context_length(int(cfg.get("max_position_embeddings", 4096)))
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_head_count_kv(KVH)
    w.add_rope_dimension_count(D // H)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 500000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(V)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
    w.add_string("ryzjupyter.bench", GGUF_VERSION_TAG)
    # minimal SentencePiece vocabulary
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    toks += [f"t{i}" for i in range(len(toks), V)]
    types += [1] * (V - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * V)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def f32(name):
        info = ck.index[name]
        return np.ascontiguousarray(to_f32(ck.raw(name), info.dtype), dtype=np.float32)

    # embedding (tied lm_head) as Q8_0, quantized in row chunks
    emb = ck.raw("model.embed_tokens.weight")
    edt = ck.index["model.embed_tokens.weight"].dtype
    q8 = np.empty((V, D // 32 * 34), np.uint8)
    for r0 in range(0, V, 8192):
        r1 = min(V, r0 + 8192)
        q8[r0:r1] = gguf.quants.quantize(np.ascontiguousarray(to_f32(emb[r0:r1], edt), np.float32), QT.Q8_0)
    w.add_tensor("token_embd.weight", q8, raw_dtype=QT.Q8_0)
    w.add_tensor("output_norm.weight", f32("model.norm.weight"))
    names = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
             ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
             ("mlp.down_proj", "ffn_down")]
    for l in range(L):
        p, g = f"model.layers.{l}.", f"blk.{l}."
        w.add_tensor(g + "attn_norm.weight", f32(p + "input_layernorm.weight"))
        w.add_tensor(g + "ffn_norm.weight", f32(p + "post_attention_layernorm.weight"))
        if arch == "bitnet":
            w.add_tensor(g + "attn_sub_norm.weight", f32(p + "self_attn.attn_sub_norm.weight"))
            w.add_tensor(g + "ffn_sub_norm.weight", f32(p + "mlp.ffn_sub_norm.weight"))
        for ours, theirs in names:
            trits = trits_from_bitnet_packed(np.ascontiguousarray(ck.raw(p + ours + ".weight")))
            scale = float(f32(p + ours + ".weight_scale").reshape(-1)[0])
            w.add_tensor(g + theirs + ".weight", tq2_0_blocks(trits, 1.0 / scale), raw_dtype=QT.TQ2_0)
        if progress:
            progress(l + 1, L)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ck.close()
    os.replace(tmp, path)
    return path


# ---- the worker (child side; needs llama_cpp only) ------------------------------------------

def _worker_main(gguf_path, n_ctx):
    import ctypes
    import numpy as np
    import llama_cpp
    llm = None
    threads = None
    n_vocab = None

    def load(th):
        nonlocal llm, n_vocab
        if llm is not None:
            llm.close() if hasattr(llm, "close") else None
            llm = None
        llm = llama_cpp.Llama(gguf_path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=th,
                              n_threads_batch=th, verbose=False, logits_all=False, use_mmap=True)
        n_vocab = llm.n_vocab()

    def last_argmax():
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ok": True, "llama_cpp": llama_cpp.__version__,
           "system_info": llama_cpp.llama_print_system_info().decode(errors="replace")})
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            if op == "threads":
                if req["n"] != threads:
                    threads = req["n"]
                    load(threads)
                reply({"ok": True})
            elif op == "prefill":
                toks = [3 + (i * 7919) % (n_vocab - 3) for i in range(req["n"])]
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(toks)
                last_argmax()
                reply({"ok": True, "seconds": time.perf_counter() - t0})
            elif op == "decode":
                ctx, n = req["context"], req["n"]
                if req.get("refill") or llm.n_tokens < ctx:
                    llm.reset()
                    if ctx:
                        llm.eval([3 + (i * 7919) % (n_vocab - 3) for i in range(ctx)])
                llm.n_tokens = ctx                         # keep the first ctx rows, drop the rest
                tok = 1
                t0 = time.perf_counter()
                for _ in range(n):
                    llm.eval([tok])
                    tok = last_argmax()
                reply({"ok": True, "seconds": time.perf_counter() - t0})
            elif op == "quit":
                reply({"ok": True})
                break
            else:
                reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as e:                              # report, keep serving
            reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
    del ctypes


class Worker:
    """The parent's handle on the llama.cpp child process."""

    def __init__(self, proc, hello, gguf):
        self.proc, self.hello, self.gguf = proc, hello, gguf

    @classmethod
    def start(cls, folder, gguf, *, python=None, n_ctx=4096, arch="bitnet"):
        gguf = Path(gguf)
        stamp = gguf.with_name(gguf.name + ".ok")
        want = f"{GGUF_VERSION_TAG} {arch}"
        if not gguf.is_file() or not stamp.is_file() or stamp.read_text() != want:
            t0 = time.perf_counter()
            print(f"  writing {gguf} (TQ2_0 linears, Q8_0 embedding/lm_head, arch {arch}) ...", flush=True)
            write_gguf(folder, gguf, arch=arch)
            stamp.write_text(want)
            print(f"  ... {gguf.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s", flush=True)
        exe = python or os.environ.get("RYZ_LLAMACPP_PYTHON") or sys.executable
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen([exe, "-m", "ryzjupyter.bench.llamacpp", "--worker", str(gguf), str(n_ctx)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"the llama.cpp worker ({exe}) did not start; it needs llama-cpp-python "
                               "(pip install 'ryzjupyter[bench]', or --llamacpp-python PATH)")
        return cls(proc, json.loads(line), gguf)

    def describe(self):
        return f"llama-cpp-python {self.hello.get('llama_cpp')}, {self.gguf.name}"

    def _ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the llama.cpp worker exited")
        r = json.loads(line)
        if not r.get("ok"):
            raise RuntimeError(f"llama.cpp worker: {r.get('error')}")
        return r

    def set_threads(self, n):
        self._ask(op="threads", n=n)

    def prefill(self, n):
        return self._ask(op="prefill", n=n)["seconds"]

    def decode(self, context, n):
        return self._ask(op="decode", context=context, n=n)["seconds"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self._ask(op="quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], int(sys.argv[3]))
    else:
        print("usage: python -m ryzjupyter.bench.llamacpp --worker GGUF N_CTX (started by bench model --vs llamacpp)")
        sys.exit(2)
