"""How tokens come out of a model: the generation loop every model family inherits.

generation.py   LanguageModel (generate / stream / chat / logits), Session (a KV cache, a chat
                history, counters), TextStream (the decode loop, stop rules, streaming), stats

A model family provides forward() and a cache; everything here works on that contract and
imports only the engine.
"""
