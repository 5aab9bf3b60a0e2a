"""Benchmarks: ``python -m ryzjupyter.bench kernels [--json FILE] [--repeat N]``.

``kernels`` measures this machine's limits (streaming read bandwidth, register-only
VNNI int8 peak) and the ternary kernels against them (see docs/performance.md)."""
