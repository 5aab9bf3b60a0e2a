"""`python -m ryzjupyter.selfcheck`: what the kernels run on here, and how fast.

Prints native_info(), checks the selected quantization kernel against numpy, then runs a
short kernel benchmark on this machine (`python -m ryzjupyter.bench kernels --repeat 3`: the
machine's read bandwidth and int8 peak, and the ternary kernels at BitNet-2B-4T shapes)."""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from ryzjupyter import _native
    from ryzjupyter.engine.native import native_info

    info = native_info()
    print("ryzjupyter native_info():")
    print(json.dumps(info, indent=2))
    # A correctness spot check on the selected level against numpy.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2560)).astype(np.float32)
    q = np.empty_like(x, dtype=np.int8)
    s = np.empty(64, np.float32)
    t0 = time.perf_counter()
    _native.quantize_rows_i8(q, s, x)
    dt = time.perf_counter() - t0
    ref_s = np.float32(127.0) / np.max(np.abs(x), axis=1)
    ref_q = np.clip(np.rint(x * ref_s[:, None]), -128, 127).astype(np.int8)
    ok = np.array_equal(q, ref_q) and np.array_equal(s, ref_s.astype(np.float32))
    print(f"quantize_rows_i8 [{info['isa']}] matches numpy: {ok} ({x.nbytes / dt / 1e9:.2f} GB/s, one call)")
    if not ok:
        return 1
    from ryzjupyter.bench.__main__ import main as bench_main

    return bench_main(["kernels", "--repeat", "3"] + list(argv or []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
