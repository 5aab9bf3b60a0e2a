"""Model families on the engine, and the loader that picks one for a checkpoint.

bitnet.py          BitNet b1.58 (packed 2B-4T, bf16 "online", autobitlinear, float, 1bitLLM)
bitnet_decode.py   BitNet's fused decode: one C call per token
random_bitnet.py   random-weight BitNet folders of any shape (tests and benchmarks)
recurrent.py       what Mamba and RWKV share: the state cache with snapshots (prefix reuse),
                   float32 / int8 linears, the chunked forward
head_and_state.py  what they build alike: the LM head (tied or their own), the fresh state, and
                   (Mamba, Mamba-2) the backbone's load and chunked forward
mamba.py           Mamba (MambaForCausalLM)
mamba2.py          Mamba-2 (Mamba2ForCausalLM)
rwkv.py            RWKV-4 (RwkvForCausalLM)
rwkv7.py           RWKV-7 (RWKV-LM tensor naming, model_type rwkv7)
random_recurrent.py  random-weight Mamba / RWKV-4 / RWKV-7 folders (tests and benchmarks)
loading.py         ``ryzjupyter.load``: find a checkpoint, detect its family, build the model
"""
