"""How far the engine's logits are from the fixtures' transformers references: the measurement
behind the tolerances in test_bitnet.py (TOLERANCES there quotes its output).

    python -m tests.engine.engine_error            # every fixture format, every ISA level this CPU has
    python -m tests.engine.engine_error --kv       # the lossy KV caches against the f32 cache

Two paths, each against its own reference:

* prefill: ``model.logits(input_ids_i)`` (one batched pass, every position) against
  ``logits_i`` (transformers, one full-sequence forward), i = 0, 1, 2;
* decode: the prompt ``input_ids_i`` prefilled, then the 16 greedy tokens ``greedy_i`` fed one at
  a time (one-token passes: the fused C decode) against ``greedy_logits_i``, the logits each step
  of transformers' ``generate`` chose from (the fixtures that have greedy references: packed
  from sequence 0, onebitllm from sequence 1).

Each reports the worst absolute error max|got - ref| and the relative one max|got - ref| / max|ref|
(per sequence, then the worst over the sequences).

``--kv``: the same two paths with a lossy KV cache (``kv_cache`` f16, bf16, int8) against the same
model with the exact float32 cache (the engine's own logits, not transformers'), for KV_FIXTURES."""
from __future__ import annotations

import numpy as np
from safetensors.numpy import load_file

from ryzjupyter.families.loading import load

from .conftest import FIXTURES

FORMATS = ["packed", "online", "online_fp32", "autobitlinear_offline", "float_noquant", "onebitllm",
           "untied", "sharded", "rope_parameters"]


def reference(name):
    return load_file(str(FIXTURES / name / "reference.safetensors"))


def sequences(ref):
    """The indices i of the input_ids_i / logits_i pairs."""
    return sorted(int(k.rsplit("_", 1)[1]) for k in ref if k.startswith("input_ids_"))


def greedy_indices(ref):
    return sorted(int(k.rsplit("_", 1)[1]) for k in ref if k.startswith("greedy_logits_"))


def error(got, want):
    """(max abs error, max abs error / max |ref|) of one array against its reference."""
    assert got.shape == want.shape, (got.shape, want.shape)
    d = float(np.abs(got.astype(np.float64) - want).max())
    return d, d / float(np.abs(want).max())


def prefill_error(model, ref):
    """Worst (abs, rel) of model.logits over the reference's sequences."""
    errs = [error(model.logits(ref[f"input_ids_{i}"]), ref[f"logits_{i}"]) for i in sequences(ref)]
    return max(e[0] for e in errs), max(e[1] for e in errs)


def decode_step_logits(model, prompt, tokens):
    """The logits a greedy run sees at each step: the prompt's last position, then one-token
    passes over `tokens[:-1]` (the engine's decode path)."""
    cache = model.new_cache()
    steps = [model.forward(np.asarray(prompt, np.int64), cache)[-1]]
    for t in tokens[:-1]:
        steps.append(model.forward(np.array([t], np.int64), cache)[-1])
    return np.stack(steps)


def decode_error(model, ref):
    """Worst (abs, rel) of the engine's decode-step logits against transformers' generate logits
    over the reference's greedy runs."""
    errs = [error(decode_step_logits(model, ref[f"input_ids_{i}"].tolist(), ref[f"greedy_{i}"].tolist()),
                  ref[f"greedy_logits_{i}"]) for i in greedy_indices(ref)]
    return max(e[0] for e in errs), max(e[1] for e in errs)


KV_FIXTURES = ["packed", "onebitllm"]
KV_FORMATS = ["f16", "bf16", "int8"]


def kv_error(name, kv):
    """Worst (abs, rel) of the prefill logits and of the decode-step logits with kv_cache=kv,
    against the same fixture with the float32 cache."""
    ref = reference(name)
    exact, lossy = load(str(FIXTURES / name), convert_cache=False), load(str(FIXTURES / name), kv_cache=kv,
                                                                          convert_cache=False)
    pre = [error(lossy.logits(ref[f"input_ids_{i}"]), exact.logits(ref[f"input_ids_{i}"]).astype(np.float64))
           for i in sequences(ref)]
    dec = []
    for i in greedy_indices(ref):
        args = ref[f"input_ids_{i}"].tolist(), ref[f"greedy_{i}"].tolist()
        dec.append(error(decode_step_logits(lossy, *args), decode_step_logits(exact, *args).astype(np.float64)))
    worst = lambda es: (max(e[0] for e in es), max(e[1] for e in es))   # noqa: E731
    return {"prefill": worst(pre), "decode": worst(dec)}


def measure_kv(isas=None):
    """{(format, kv, isa): kv_error(format, kv)}."""
    from ryzjupyter.engine.native import supported_isas, using_isa
    out = {}
    for isa in isas or supported_isas():
        with using_isa(isa):
            for name in KV_FIXTURES:
                for kv in KV_FORMATS:
                    out[name, kv, isa] = kv_error(name, kv)
    return out


def main_kv():
    import platform

    from ryzjupyter.engine.native import native_info
    res = measure_kv()
    print(f"{platform.processor() or platform.machine()}; kernels: {native_info()['supported_isas']}; "
          f"against the same fixture with kv_cache='f32'")
    print(f"{'format':12s} {'kv':5s} {'isa':11s} {'prefill abs':>12s} {'prefill rel':>12s} {'decode abs':>12s} "
          f"{'decode rel':>12s}")
    for (name, kv, isa), r in res.items():
        print(f"{name:12s} {kv:5s} {isa:11s} {r['prefill'][0]:12.3g} {r['prefill'][1]:12.3g} {r['decode'][0]:12.3g} "
              f"{r['decode'][1]:12.3g}")
    for kv in KV_FORMATS:
        rs = [r for (n, k, i), r in res.items() if k == kv]
        print(f"worst {kv}: prefill abs {max(r['prefill'][0] for r in rs):.3g} rel "
              f"{max(r['prefill'][1] for r in rs):.3g}; decode abs {max(r['decode'][0] for r in rs):.3g} rel "
              f"{max(r['decode'][1] for r in rs):.3g}")


def measure(isas=None):
    """{(format, isa): {"prefill": (abs, rel), "decode": (abs, rel) or None}}."""
    from ryzjupyter.engine.native import supported_isas, using_isa
    out = {}
    for isa in isas or supported_isas():
        with using_isa(isa):
            for name in FORMATS:
                m, ref = load(str(FIXTURES / name), convert_cache=False), reference(name)
                out[name, isa] = {"prefill": prefill_error(m, ref),
                                  "decode": decode_error(m, ref) if greedy_indices(ref) else None}
    return out


def main():
    import platform

    from ryzjupyter.engine.native import native_info
    res = measure()
    print(f"{platform.processor() or platform.machine()}; kernels: {native_info()['supported_isas']}")
    print(f"{'format':22s} {'isa':7s} {'prefill abs':>12s} {'prefill rel':>12s} {'decode abs':>12s} {'decode rel':>12s}")
    for (name, isa), r in res.items():
        d = r["decode"]
        print(f"{name:22s} {isa:7s} {r['prefill'][0]:12.3g} {r['prefill'][1]:12.3g} "
              f"{(f'{d[0]:12.3g} {d[1]:12.3g}') if d else ' ' * 25}")
    pa = max(r["prefill"][0] for r in res.values())
    pr = max(r["prefill"][1] for r in res.values())
    print(f"worst prefill: abs {pa:.3g}, rel {pr:.3g}")
    dec = [r["decode"] for r in res.values() if r["decode"]]
    if dec:
        print(f"worst decode: abs {max(d[0] for d in dec):.3g}, rel {max(d[1] for d in dec):.3g}")


if __name__ == "__main__":
    import sys
    main_kv() if "--kv" in sys.argv[1:] else main()
