"""`python -m ryzjupyter.selfcheck`: what the kernels run on here, in a second or two.

    python -m ryzjupyter.selfcheck            # ISA level, kernel variants, threads, a spot check
    python -m ryzjupyter.selfcheck --bench    # then measure: read bandwidth, int8 peak, ternary kernels
    python -m ryzjupyter.selfcheck --json     # native_info() as JSON

The quick report prints the ISA level in use (and the best one this CPU has), the variant each
kernel dispatches to, the thread pool size, and checks the selected quantization kernel against
numpy. `--bench` adds the kernel benchmark (`python -m ryzjupyter.bench kernels --repeat 3`, about
half a minute); extra arguments after `--bench` go to it."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def spot_check() -> bool:
    """The selected level's int8 row quantization equals numpy's, bit for bit."""
    from ryzjupyter import _native
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 2560)).astype(np.float32)
    q = np.empty_like(x, dtype=np.int8)
    s = np.empty(16, np.float32)
    _native.quantize_rows_i8(q, s, x)
    ref_s = np.float32(127.0) / np.max(np.abs(x), axis=1)
    ref_q = np.clip(np.rint(x * ref_s[:, None]), -128, 127).astype(np.int8)
    return bool(np.array_equal(q, ref_q) and np.array_equal(s, ref_s.astype(np.float32)))


def report(info: dict, ok: bool) -> str:
    """The quick report, as text."""
    lines = [f"ryzjupyter {info.get('version', '?')}",
             f"ISA level      {info['isa']} (best on this CPU: {info['best_isa']}; "
             f"supported: {', '.join(info['supported_isas'])})",
             f"threads        {info['threads']} (physical cores: {info.get('physical_cores', '?')}; "
             "RYZ_NUM_THREADS sets it)",
             f"CPU features   {' '.join(info.get('cpu_features', []))}"]
    if info.get("sanitized"):
        lines.append("build          AddressSanitizer + UndefinedBehaviorSanitizer")
    lines.append("kernels:")
    kernels = info.get("kernels", {})
    w = max((len(k) for k in kernels), default=0)
    for name, level in kernels.items():
        lines.append(f"  {name:<{w}}  {level}")
    lines.append(f"spot check     quantize_rows_i8 [{info['isa']}] matches numpy: {ok}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ryzjupyter.selfcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--bench", action="store_true",
                    help="also measure the kernels (read bandwidth, int8 peak, ternary GEMV/GEMM; ~30 s)")
    ap.add_argument("--json", action="store_true", help="print native_info() as JSON instead of the report")
    args, rest = ap.parse_known_args(argv)
    if rest and not args.bench:
        ap.error(f"unknown arguments {' '.join(rest)} (arguments for the benchmark follow --bench)")
    from ryzjupyter.engine.native import native_info

    info = native_info()
    ok = spot_check()
    print(json.dumps(info, indent=2) if args.json else report(info, ok))
    if not ok:
        print("error: the selected kernel disagrees with numpy; report this with the output above "
              "(RYZ_ISA=scalar selects the plain C kernels meanwhile)", file=sys.stderr)
        return 1
    if not args.bench:
        return 0
    from ryzjupyter.bench.__main__ import main as bench_main
    print()
    return bench_main(["kernels", "--repeat", "3"] + rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
