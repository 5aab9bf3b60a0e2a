"""The engine: everything a model family needs to run tokens, with no Jupyter in it.

checkpoint.py   config.json, safetensors (memory-mapped), format detection, hub ids
tokenizer.py    BPE tokenizer, incremental decoding, chat templates (jinja2 sandbox)
ternary.py      packed ternary weights (I2, LUT, T5 layouts) and the kernel that fits each
kv_cache.py     the attention cache (f32, f16, bf16 or int8), prefix reuse and truncation
sampling.py     greedy / temperature / top-k / top-p / min-p / repetition penalty, seeded
profiling.py    named-phase time counters the surfaces read
native.py       the C extension's ISA level and thread count as Python sees them

It imports only ``ryzjupyter._native`` and its own modules (checked by import-linter, see
``.importlinter``), so it runs in a plain Python script outside any kernel.
"""
