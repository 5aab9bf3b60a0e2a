"""Benchmarks: ``python -m ryzjupyter.bench kernels [--json FILE] [--repeat N]``.

``kernels`` measures this machine's limits (streaming read bandwidth, the register-only
int8 peak of the ISA level in use: ``bench/probes.py``) and the ternary kernels against them;
``model`` a whole model's decode and prefill against them (and llama.cpp); ``ppl`` perplexity
(see docs/performance.md)."""
