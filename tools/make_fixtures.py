#!/usr/bin/env python
"""Generate the small, deterministic test fixtures under tests/fixtures/.

Run (from anywhere, with a python that has the requirements below):

    python tools/make_fixtures.py                    # everything
    python tools/make_fixtures.py --only onebitllm   # one fixture; the others keep their bytes

Requirements (fixture generation only, never a runtime dependency of ryzjupyter):
torch==2.13.0 (CPU), transformers==5.23.0, tokenizers, safetensors, accelerate, jinja2.

What it writes (see tools/README.md for the full description):

* tests/fixtures/tokenizer/      a tiny byte-level BPE tokenizer (Llama-3 style pre-tokenizer,
                                 special tokens <|begin_of_text|>, <|end_of_text|>, <|eot_id|>,
                                 a chat template) + reference.json with encodings / chat renderings.
* tests/fixtures/bitnet/<name>/  tiny BitNet b1.58 models in every checkpoint format the engine
                                 loads, each with config.json, weights, tokenizer files and
                                 reference.safetensors / reference.json (fp32 logits).
* tests/fixtures/bitnet/manifest.json  a machine-readable list of the model fixtures.
* tests/fixtures/recurrent/<name>/  (``--recurrent``, tools/recurrent_fixtures.py) tiny Mamba,
                                 Mamba-2 and RWKV-4 models from transformers in F32 / F16 / BF16
                                 with reference logits and greedy continuations.

Everything is derived from fixed seeds; running the script twice gives byte-identical files
(the script checks the tokenizer for that, and the weights come from seeded torch generators).

Numerics of the references: transformers is run in float32 (`dtype=torch.float32`), eval mode,
no grad, `attn_implementation="eager"`, TorchDynamo disabled (transformers decorates the BitNet
quantization helpers with `@torch.compile`; eager evaluation is the plain textbook order of
operations and avoids a slow compile), one thread.  The 1bitLLM layout cannot be loaded natively
by transformers (a plain Llama load drops its sub-norms and quantizes nothing), so its reference is
transformers' LlamaForCausalLM with the 1bitLLM quantization applied from transformers' own parts
(`onebitllm_transformers`: every decoder linear an AutoBitLinear with online quantization, the two
sub-norms as the RMSNorm AutoBitLinear applies before o_proj / down_proj).  `reference_forward`
below, a separate torch re-implementation, must agree with transformers on every model.
"""

from __future__ import annotations

import os

# Must be set before torch / tokenizers are imported.
os.environ["TORCHDYNAMO_DISABLE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from tokenizers import processors, trainers  # noqa: E402

transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
TOK_DIR = FIX / "tokenizer"
BITNET_DIR = FIX / "bitnet"
COMMAND = "/work/venv-torch/bin/python tools/make_fixtures.py"

# --------------------------------------------------------------------------------------------
# 1. Tokenizer
# --------------------------------------------------------------------------------------------

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
TOKENIZER_VOCAB = 384  # 256 byte symbols + merges = 381, then the 3 special tokens -> 381..383

# The exact pre-tokenizer regex of the Llama-3 tokenizer.json.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Chat format of microsoft/bitnet-b1.58-2B-4T ("Role: content<|eot_id|>"), written as a
# Llama-3-style jinja template (bos_token first, raise_exception on an unknown role).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first -%}{{ bos_token }}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ 'System: ' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'User: ' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'Assistant: ' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- else -%}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant: ' }}{%- endif -%}"
)

# Training text: written for this project (no third-party text), a few KB of plain English
# with digits, punctuation, contractions, newlines and chat-style lines.
CORPUS = """\
The small river ran past the mill and under the old stone bridge. In the morning the water was
clear and cold, and the children of the village came down to watch the fish.
User: What is the capital of France?
Assistant: The capital of France is Paris.
User: How are you today?
Assistant: I'm fine, thank you. How can I help you?
System: You are a helpful assistant. Answer briefly and clearly.
It was the first day of spring. The birds were singing in the trees, and the farmer walked out
to look at his fields. He had planted wheat in the north field and barley in the south field.
"We'll need rain soon," he said to his wife. "If it doesn't rain this week, the young plants
will suffer." She nodded and looked at the sky, which was blue and empty.
In 1869 the railway reached the town, and by 1900 there were 3 stations, 12 shops and 250 houses.
The numbers grew every year: 1901, 1902, 1903. Prices were low; bread cost 5 cents.
A computer program is a list of instructions. The computer reads the instructions one by one
and does what they say. Some programs are short, with only 10 or 20 lines; others have millions
of lines and are written by large teams of people over many years.
User: Can you write a short poem about the sea?
Assistant: The sea is wide, the sea is deep,
it sings the sailors off to sleep.
User: Thanks! That's lovely.
Assistant: You're welcome.
The cat sat on the warm window sill and watched the rain. It didn't want to go outside. Now and
then it closed its eyes, then opened them again to look at the drops running down the glass.
Learning to cook is simple if you start with easy dishes. Boil water, add salt, and cook the
pasta for 8 to 10 minutes. Then drain it, add a little oil, some cheese and fresh pepper.
The library opens at 9 and closes at 5. Books may be borrowed for 14 days, and they can be
renewed twice. Please return them on time, so that other readers can enjoy them too.
She asked, "Where are you going?" He answered, "To the market, to buy apples, eggs and milk."
They walked together along the road, talking about the weather, the harvest and the news.
Mathematics is the study of numbers, shapes and patterns. For example, 2 + 2 = 4, and 3 * 7 = 21.
A triangle has 3 sides; a square has 4. The sum of the angles in a triangle is 180 degrees.
User: What is 12 times 12?
Assistant: 12 times 12 is 144.
User: And what is the square root of 81?
Assistant: The square root of 81 is 9.
At night the town was quiet. A few lights were still on in the windows, and somewhere a dog
barked twice and then stopped. The moon rose over the hills and the river shone like silver.
Good writing is clear writing. Use short words when you can, and short sentences when they
help the reader. Say what you mean, and then stop. Read your text aloud before you share it.
The train left the station at 7:45 and arrived in the city two hours later. Most passengers
read, slept or looked out of the window at the green fields, the farms and the small villages.
User: Tell me a fact about the moon.
Assistant: The moon is about 384,400 kilometres from the Earth.
Water boils at 100 degrees Celsius at sea level, and it freezes at 0 degrees. Ice is lighter
than water, which is why it floats. Without this simple fact, lakes would freeze from the bottom.
"""


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB - 3,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    assert tok.get_vocab_size() == TOKENIZER_VOCAB - 3, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, EOT)])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    assert tok.get_vocab_size() == TOKENIZER_VOCAB
    return tok


def tokenizer_config(tok: Tokenizer) -> dict:
    added = {}
    for t in (BOS, EOS, EOT):
        added[str(tok.token_to_id(t))] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer_files(tok: Tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"), pretty=True)
    write_json(folder / "tokenizer_config.json", tokenizer_config(tok))


TOKENIZER_TEXTS = [
    "Hello, my dog is cute",
    "The capital of France is Paris.",
    "In 1869 the railway reached the town; bread cost 5 cents!",
    "  two spaces, a tab\tand\nnew lines\n\n",
    "It's what we'll do, isn't it?",
    "Unicode: café, naïve, 東京, 😀",
    f"User: How are you?{EOT}Assistant: ",
    "",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi! "},
        {"role": "assistant", "content": " Hello, how can I help?"},
        {"role": "user", "content": "Tell me a fact about the moon."},
    ],
]


def make_tokenizer_fixture() -> tuple[Tokenizer, dict]:
    tok = build_tokenizer()
    again = build_tokenizer()
    assert tok.to_str() == again.to_str(), "BPE training is not deterministic"
    save_tokenizer_files(tok, TOK_DIR)

    # Cross-check with transformers' fast tokenizer and its apply_chat_template.
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(TOK_DIR))
    encodings = []
    for text in TOKENIZER_TEXTS:
        plain = tok.encode(text, add_special_tokens=False).ids
        with_special = tok.encode(text, add_special_tokens=True).ids
        assert hf(text, add_special_tokens=False)["input_ids"] == plain
        assert hf(text, add_special_tokens=True)["input_ids"] == with_special
        decoded = tok.decode(plain, skip_special_tokens=False)
        assert decoded == text, (decoded, text)
        encodings.append(
            {
                "text": text,
                "ids": plain,
                "ids_add_special_tokens": with_special,
                "decode_skip_special_tokens": tok.decode(plain, skip_special_tokens=True),
            }
        )
    chats = []
    for messages in CHATS:
        for gen in (True, False):
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = list(ids)
            assert ids == tok.encode(text, add_special_tokens=False).ids
            chats.append({"messages": messages, "add_generation_prompt": gen, "text": text, "ids": ids})
    info = {
        "bos_token": BOS,
        "bos_token_id": tok.token_to_id(BOS),
        "eos_token": EOS,
        "eos_token_id": tok.token_to_id(EOS),
        "eot_token": EOT,
        "eot_token_id": tok.token_to_id(EOT),
        "vocab_size": tok.get_vocab_size(),
    }
    reference = {
        "what": "tiny byte-level BPE fixture tokenizer (Llama-3 style pre-tokenizer and post-processor)",
        "generated_by": "tools/make_fixtures.py",
        "command": COMMAND,
        "versions": versions(),
        **info,
        "notes": [
            "post_processor adds <|begin_of_text|> when add_special_tokens=True (like 2B4T);",
            "chat templates render bos_token themselves: encode them with add_special_tokens=False;",
            "chat 'ids' come from transformers apply_chat_template(tokenize=True).",
        ],
        "encodings": encodings,
        "chat": chats,
    }
    write_json(TOK_DIR / "reference.json", reference)
    return tok, info


def versions() -> dict:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------------------------
# 2. Tiny BitNet models
# --------------------------------------------------------------------------------------------

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 64, 160, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS  # 16
EPS = 1e-5
# per-tensor std of the latent linears ranges over [LO, HI] (mean|W| = 0.8 std): large enough that the
# attention/MLP branches dominate the tied embeddings, so greedy decoding does not just repeat a token.
LIN_STD_LO, LIN_STD_HI = 0.10, 0.30
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shape(name: str, hidden: int, inter: int, heads: int, kv_heads: int) -> tuple[int, int]:
    hd = hidden // heads
    return {
        "q_proj": (heads * hd, hidden),
        "k_proj": (kv_heads * hd, hidden),
        "v_proj": (kv_heads * hd, hidden),
        "o_proj": (hidden, heads * hd),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }[name]


def linear_prefix(name: str) -> str:
    return "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"


def make_latent_weights(
    seed: int,
    vocab: int,
    *,
    kv_heads: int = KV_HEADS,
    sub_norm_names: tuple[str, str] = ("attn_sub_norm", "ffn_sub_norm"),
) -> dict[str, torch.Tensor]:
    """Random float32 "latent" (master) weights with trained-like magnitudes.

    Linears: N(0, std^2) with a different std per tensor (0.10..0.30, so mean|W| = 0.08..0.24
    differs per tensor and a mixed-up weight_scale shows; 1/mean|W| > 1 as in real checkpoints),
    about 31% of the ternary values become 0.
    Norm weights: 1 + N(0, 0.2^2) (never exactly one).  Embeddings: N(0, 0.35^2), which gives
    logits with a spread of a few units (clear argmax gaps for greedy references).
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32)

    W = {"model.embed_tokens.weight": randn(vocab, HIDDEN) * 0.35}
    attn_sub, ffn_sub = sub_norm_names
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        W[p + "input_layernorm.weight"] = 1.0 + 0.2 * randn(HIDDEN)
        W[p + "post_attention_layernorm.weight"] = 1.0 + 0.2 * randn(HIDDEN)
        W[p + f"self_attn.{attn_sub}.weight"] = 1.0 + 0.2 * randn(HIDDEN)
        W[p + f"mlp.{ffn_sub}.weight"] = 1.0 + 0.2 * randn(INTER)
        for k, name in enumerate(LINEARS):
            shape = linear_shape(name, HIDDEN, INTER, HEADS, kv_heads)
            std = LIN_STD_LO + (LIN_STD_HI - LIN_STD_LO) * ((k * 3 + layer * 5) % 7) / 6.0
            W[p + f"{linear_prefix(name)}.{name}.weight"] = randn(*shape) * std
    W["model.norm.weight"] = 1.0 + 0.2 * randn(HIDDEN)
    return W


def is_linear(key: str) -> bool:
    return any(f".{n}.weight" in key for n in LINEARS)


def round_to(W: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Round every tensor through `dtype` and back to float32."""
    return {k: v.to(dtype).to(torch.float32) for k, v in W.items()}


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization, with exactly the torch ops of transformers' WeightQuant.

    s = 1 / max(mean|W|, 1e-5);  t = clamp(round(W * s), -1, 1)   (round half to even)
    Returns (trits int8, s = 1/absmean as float32 [1], absmean as float32 [1]).
    """
    w = w.float()
    s = 1.0 / w.abs().mean().clamp_(min=1e-5)
    t = (w * s).round().clamp(-1, 1).to(torch.int8)
    absmean = w.abs().mean().clamp_(min=1e-5)
    return t, s.reshape(1), absmean.reshape(1)


def pack_ternary(t: torch.Tensor) -> torch.Tensor:
    """2-bit packing of microsoft/bitnet-b1.58-2B-4T (transformers integrations/bitnet.pack_weights).

    t: int8 [N, K] with values in {-1, 0, 1}, N % 4 == 0.  Returns uint8 [N/4, K] where
    bits 2i..2i+1 of packed[r, c] hold t[i*N/4 + r, c] + 1 (blocked along the output rows).
    """
    n = t.shape[0]
    assert n % 4 == 0
    r = n // 4
    u = (t.to(torch.int16) + 1).to(torch.uint8)
    packed = torch.zeros((r, t.shape[1]), dtype=torch.uint8)
    for i in range(4):
        packed |= u[i * r : (i + 1) * r] << (2 * i)
    # cross-check against transformers' own packer
    from transformers.integrations.bitnet import pack_weights

    assert torch.equal(packed, pack_weights(t.clone().to(torch.int32)))
    return packed


def unpack_ternary(p: torch.Tensor) -> torch.Tensor:
    r = p.shape[0]
    out = torch.empty((4 * r, p.shape[1]), dtype=torch.int8)
    for i in range(4):
        out[i * r : (i + 1) * r] = ((p >> (2 * i)) & 3).to(torch.int8) - 1
    return out


def packed_state_dict(
    W: dict[str, torch.Tensor],
    *,
    scale_mode: str,
    float_dtype: torch.dtype,
    scale_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Offline (pre-quantized) checkpoint: U8 packed linears + weight_scale, floats in float_dtype.

    scale_mode "reciprocal": weight_scale = 1/absmean   (linear_class bitlinear: divide)
    scale_mode "absmean":    weight_scale = absmean     (linear_class autobitlinear: multiply)
    """
    sd = {}
    for k, v in W.items():
        if is_linear(k):
            t, s, absmean = ternarize(v)
            p = pack_ternary(t)
            assert torch.equal(unpack_ternary(p), t)
            # the stored codes and scale are exactly what on-the-fly quantization would compute
            assert torch.allclose(t.float() / s, weight_quant(v.float()), rtol=1e-6, atol=0)
            sd[k] = p
            scale = s if scale_mode == "reciprocal" else absmean
            sd[k[: -len("weight")] + "weight_scale"] = scale.to(scale_dtype)
        else:
            sd[k] = v.to(float_dtype)
    return sd


def float_state_dict(W: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in W.items()}


DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def bitnet_config(
    tok_info: dict,
    *,
    quantization_config: dict | None,
    tie: bool = True,
    dtype: torch.dtype = torch.float32,
    theta: float = 500000.0,
    rope_spelling: str = "rope_theta",
) -> dict:
    """config.json in the style of microsoft/bitnet-b1.58-2B-4T (transformers 4.5x spelling:
    top-level rope_theta + torch_dtype), or the transformers-5 spelling (rope_parameters + dtype)."""
    c = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": tok_info["vocab_size"],
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "relu2",
        "max_position_embeddings": 256,
        "initializer_range": 0.02,
        "rms_norm_eps": EPS,
        "use_cache": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok_info["bos_token_id"],
        "eos_token_id": tok_info["eos_token_id"],
        "tie_word_embeddings": tie,
    }
    if rope_spelling == "rope_theta":
        c["rope_theta"] = theta
        c["torch_dtype"] = DTYPE_NAMES[dtype]
    else:
        c["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
        c["dtype"] = DTYPE_NAMES[dtype]
    if quantization_config is not None:
        c["quantization_config"] = quantization_config
    return c


def onebitllm_config(tok_info: dict) -> dict:
    """config.json in the layout of 1bitLLM/bitnet_b1_58-large (model_type llama, MHA, SiLU)."""
    return {
        "architectures": ["BitnetForCausalLM"],
        "model_type": "llama",
        "vocab_size": tok_info["vocab_size"],
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "initializer_range": 0.02,
        "rms_norm_eps": EPS,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "pretraining_tp": 1,
        "use_cache": True,
        "input_bits": 8,
        "weight_bits": 1,
        "bos_token_id": tok_info["bos_token_id"],
        "eos_token_id": tok_info["eos_token_id"],
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
    }


def generation_config(tok_info: dict) -> dict:
    # like 2B4T: chat generation stops on <|eot_id|> as well as on <|end_of_text|>
    return {
        "bos_token_id": tok_info["bos_token_id"],
        "eos_token_id": [tok_info["eos_token_id"], tok_info["eot_token_id"]],
        "do_sample": False,
    }


# --------------------------------------------------------------------------------------------
# Independent reference implementation (used for 1bitLLM; validated against transformers)
# --------------------------------------------------------------------------------------------


# Rounding margins seen by reference_forward: the smallest distance (in quantization steps) of any
# pre-rounding value x*s to a rounding boundary (k + 0.5).  An engine whose pre-rounding values
# differ from the reference by less than this reproduces the reference's integer codes exactly.
MARGINS = {"activation": float("inf"), "weight": float("inf")}


def _margin(v: torch.Tensor) -> float:
    return float(((v - v.floor()) - 0.5).abs().min())


def act_quant(x: torch.Tensor) -> torch.Tensor:
    """Per-token int8 absmax fake quantization (1bitLLM utils_quant.activation_quant, 8 bits):
    s = 127 / max(max_k |x_k|, 1e-5);  x_q = clamp(round(x * s), -128, 127) / s."""
    s = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    MARGINS["activation"] = min(MARGINS["activation"], _margin(x * s))
    return (x * s).round().clamp(-128, 127) / s


def weight_quant(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor absmean ternary fake quantization (1bitLLM utils_quant.weight_quant):
    s = 1 / max(mean |W|, 1e-5);  W_q = clamp(round(W * s), -1, 1) / s."""
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    v = (w * s).abs()
    MARGINS["weight"] = min(MARGINS["weight"], float((v - 0.5).abs().min()))  # only 0.5 matters (clamp)
    return (w * s).round().clamp(-1, 1) / s


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


@torch.no_grad()
def reference_forward(
    W: dict[str, torch.Tensor],
    ids: list[int],
    *,
    heads: int,
    kv_heads: int,
    theta: float,
    act: str,
    sub_norm_names: tuple[str, str],
    quantize: bool,
    eps: float = EPS,
    float64_matmul: bool = False,
) -> torch.Tensor:
    """Plain float32 forward of a BitNet b1.58 decoder on one sequence; returns logits [T, V].

    Per layer (x = hidden state [T, D]):
        a   = rmsnorm(x; input_layernorm)
        q,k,v = L_q(a), L_k(a), L_v(a); RoPE (HF rotate_half, inv_freq = theta^(-2i/hd), pos 0..T-1)
        o   = causal softmax(q k^T / sqrt(hd)) v          (GQA: q head h uses kv head h // (H/KV))
        x   = x + L_o(rmsnorm(o; attn sub norm))           (1bitLLM: inner_attn_ln)
        m   = act(L_gate(b)) * L_up(b),  b = rmsnorm(x; post_attention_layernorm)
              act = relu(.)^2 ("relu2", 2B4T) or silu (1bitLLM)
        x   = x + L_down(rmsnorm(m; ffn sub norm))         (1bitLLM: ffn_layernorm)
    logits = rmsnorm(x; model.norm) @ E^T  (E = lm_head.weight if stored, else embed_tokens; float)
    L(y) = y @ W^T for quantize=False; for quantize=True L(y) = act_quant(y) @ weight_quant(W)^T
    (1bitLLM's BitLinear: `input + (activation_quant(input) - input).detach()` etc. is the same
    value; the straight-through form only matters for gradients).  RMSNorm:
    y * rsqrt(mean(y^2) + eps) * w.

    float64_matmul=True evaluates the linears in float64 (then rounds to float32): a stand-in for a
    correct engine with a different order of float operations, used to estimate test tolerances.
    """
    attn_sub, ffn_sub = sub_norm_names

    def lin(y, key):
        w = W[key]
        if quantize:
            y, w = act_quant(y), weight_quant(w)
        if float64_matmul:
            return (y.double() @ w.double().T).float()
        return y @ w.T

    ids_t = torch.tensor(ids, dtype=torch.long)
    T = len(ids)
    hidden = W["model.embed_tokens.weight"].shape[1]
    hd = hidden // heads
    x = W["model.embed_tokens.weight"][ids_t]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()  # [T, hd]
    causal = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        a = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(a, p + "self_attn.q_proj.weight").view(T, heads, hd).transpose(0, 1)
        k = lin(a, p + "self_attn.k_proj.weight").view(T, kv_heads, hd).transpose(0, 1)
        v = lin(a, p + "self_attn.v_proj.weight").view(T, kv_heads, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = heads // kv_heads
        k = k.repeat_interleave(rep, dim=0)
        v = v.repeat_interleave(rep, dim=0)
        scores = (q @ k.transpose(1, 2)) * hd**-0.5 + causal
        o = torch.softmax(scores, dim=-1) @ v  # [H, T, hd]
        o = o.transpose(0, 1).reshape(T, heads * hd)
        o = rms_norm(o, W[p + f"self_attn.{attn_sub}.weight"], eps)
        x = x + lin(o, p + "self_attn.o_proj.weight")
        b = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        gate = lin(b, p + "mlp.gate_proj.weight")
        up = lin(b, p + "mlp.up_proj.weight")
        if act == "relu2":
            m = torch.relu(gate).square() * up
        elif act == "silu":
            m = F.silu(gate) * up
        else:
            raise ValueError(act)
        m = rms_norm(m, W[p + f"mlp.{ffn_sub}.weight"], eps)
        x = x + lin(m, p + "mlp.down_proj.weight")
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


# --------------------------------------------------------------------------------------------
# transformers runs
# --------------------------------------------------------------------------------------------


def load_hf(folder: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    return model, info


@torch.no_grad()
def hf_logits(model, seqs: list[list[int]]) -> list[torch.Tensor]:
    out = []
    for ids in seqs:
        x = torch.tensor([ids], dtype=torch.long)
        out.append(model(input_ids=x).logits[0].float().clone())
    return out


def onebitllm_transformers(folder: Path):
    """transformers' Llama with the 1bitLLM quantization applied: the independent reference for
    the 1bitLLM layout (transformers cannot load it as is, see the naive load below).

    1bitLLM/bitnet_b1_58 ships a modeling file that is Llama with every decoder linear a BitLinear
    (per-tensor absmean ternary weights, per-token absmax int8 activations, both fake-quantized in
    float32) and two extra RMSNorms: `self_attn.inner_attn_ln` on the attention output before
    o_proj and `mlp.ffn_layernorm` on act(gate) * up before down_proj. Here that is built from
    transformers' own parts: `LlamaForCausalLM` loaded from the folder (which drops the two norms
    as unexpected keys), then each of the seven linears of every layer replaced by transformers'
    `AutoBitLinear(online_quant=True)` (WeightQuant / ActQuant of transformers/integrations/bitnet.py,
    the same formulas as 1bitLLM's utils_quant), o_proj and down_proj with `use_rms_norm=True`
    carrying the stored inner_attn_ln / ffn_layernorm weights (AutoBitLinear applies its
    LlamaRMSNorm to the input before quantizing it). Nothing here comes from reference_forward."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    model, info = LlamaForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    model.eval()
    sd = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    sub = {"o_proj": "self_attn.inner_attn_ln.weight", "down_proj": "mlp.ffn_layernorm.weight"}
    expect_unexpected = {f"model.layers.{i}.{n}" for i in range(LAYERS) for n in sub.values()}
    assert set(info["unexpected_keys"]) == expect_unexpected, info["unexpected_keys"]
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    eps = model.config.rms_norm_eps
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                  (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
                for n in names:
                    old = getattr(parent, n)
                    new = AutoBitLinear(old.in_features, old.out_features, bias=False, dtype=torch.float32,
                                        online_quant=True, use_rms_norm=n in sub, rms_norm_eps=eps)
                    new.weight.copy_(old.weight)
                    if n in sub:
                        new.rms_norm.weight.copy_(sd[f"model.layers.{i}.{sub[n]}"])
                        assert new.rms_norm.variance_epsilon == eps
                    setattr(parent, n, new.eval())
    return model


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def sig(x: float) -> float:
    return float(f"{x:.3g}")


def check_module_kind(model, expected: str) -> None:
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear

    m = model.model.layers[0].self_attn.q_proj
    kind = {
        "bitlinear": isinstance(m, BitLinear),
        "autobitlinear_offline": isinstance(m, AutoBitLinear) and not m.online_quant,
        "autobitlinear_online": isinstance(m, AutoBitLinear) and m.online_quant,
        "float": type(m) is torch.nn.Linear,
    }[expected]
    assert kind, f"expected {expected}, transformers built {type(m).__name__}"
    assert type(model.lm_head) is torch.nn.Linear  # lm_head is never quantized


def check_loading_info(info: dict, name: str, allow_missing=()) -> None:
    missing = [k for k in info.get("missing_keys", []) if k not in allow_missing]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    assert not missing and not unexpected and not mismatched, (name, missing, unexpected, mismatched)


def write_model(
    folder: Path,
    config: dict,
    sd: dict[str, torch.Tensor] | None,
    tok: Tokenizer,
    tok_info: dict,
    *,
    shards: list[list[str]] | None = None,
) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(folder / "config.json", config)
    write_json(folder / "generation_config.json", generation_config(tok_info))
    save_tokenizer_files(tok, folder)
    meta = {"format": "pt"}
    if shards is None:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"), metadata=meta)
        return
    assert sorted(k for s in shards for k in s) == sorted(sd)
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: sd[k].contiguous() for k in keys}, str(folder / fname), metadata=meta)
        for k in keys:
            weight_map[k] = fname
            total += sd[k].numel() * sd[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(folder / "model.safetensors.index.json", index)


def write_reference(
    folder: Path,
    seqs: list[list[int]],
    logits: list[torch.Tensor],
    meta: dict,
    greedy: dict[int, tuple[list[int], torch.Tensor]] | None = None,
) -> None:
    tensors = {}
    for i, (ids, lg) in enumerate(zip(seqs, logits)):
        tensors[f"input_ids_{i}"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"logits_{i}"] = lg.to(torch.float32).contiguous()
    summary = {
        f"logits_{i}": {
            "shape": list(lg.shape),
            "first_row_first4": [round(float(v), 5) for v in lg[0, :4]],
            "argmax": [int(a) for a in lg.argmax(-1)],
        }
        for i, lg in enumerate(logits)
    }
    keys = {
        "input_ids_<i>": "int64 [T_i], the token ids of sequence i",
        "logits_<i>": "float32 [T_i, vocab], logits at every position (position t predicts t+1)",
    }
    if greedy:
        for i, (toks, step_logits) in greedy.items():
            tensors[f"greedy_{i}"] = torch.tensor(toks, dtype=torch.int64)
            tensors[f"greedy_logits_{i}"] = step_logits.to(torch.float32).contiguous()
            summary[f"greedy_{i}"] = toks
        keys["greedy_<i>"] = "int64 [16], greedy continuation of input_ids_<i> (new tokens only)"
        keys["greedy_logits_<i>"] = "float32 [16, vocab], the logits each greedy step chose from"
    save_file(tensors, str(folder / "reference.safetensors"), metadata={"format": "pt"})
    ref = {
        "fixture": folder.name,
        "generated_by": "tools/make_fixtures.py",
        "command": COMMAND,
        "versions": versions(),
        **meta,
        "reference_numerics": "float32, eval, no_grad, attn_implementation=eager, TorchDynamo disabled, 1 thread",
        "reference_keys": keys,
        "sequences": [list(s) for s in seqs],
        "summary": summary,
    }
    write_json(folder / "reference.json", ref)


@torch.no_grad()
def greedy_reference(model, ids: list[int], steps: int = 16) -> tuple[list[int], torch.Tensor, float]:
    """transformers generate(do_sample=False), fp32, eos disabled so exactly `steps` tokens come out.
    Cross-checked with a full-recompute argmax loop; returns (tokens, step logits, min top1-top2 gap)."""
    from transformers import GenerationConfig

    gc = GenerationConfig(
        do_sample=False,
        max_new_tokens=steps,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=0,
        num_beams=1,
        output_logits=True,
        return_dict_in_generate=True,
    )
    x = torch.tensor([ids], dtype=torch.long)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
    toks = [int(t) for t in out.sequences[0, len(ids) :]]
    step_logits = torch.stack([lg[0].float() for lg in out.logits])
    assert len(toks) == steps, toks
    seq = list(ids)
    gap = float("inf")
    for i in range(steps):
        lg = model(input_ids=torch.tensor([seq], dtype=torch.long)).logits[0, -1].float()
        top2 = lg.topk(2).values
        gap = min(gap, float(top2[0] - top2[1]))
        nxt = int(lg.argmax())
        assert nxt == toks[i], ("generate vs full-recompute argmax", i, nxt, toks[i])
        assert float((lg - step_logits[i]).abs().max()) < 1e-4   # ~5e-6 measured
        seq.append(nxt)
    return toks, step_logits, gap


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def make_all() -> None:
    """Make every fixture under FIX (tokenizer, model folders, references, manifest)."""
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
    if not torch.__version__.startswith("2.13.0"):
        print("WARNING: the fixtures were made with torch 2.13.0; other versions may change the bytes")
    FIX.mkdir(parents=True, exist_ok=True)
    if BITNET_DIR.exists():
        shutil.rmtree(BITNET_DIR)
    if TOK_DIR.exists():
        shutil.rmtree(TOK_DIR)
    BITNET_DIR.mkdir(parents=True)

    tok, tok_info = make_tokenizer_fixture()
    V = tok_info["vocab_size"]
    bos, eot = tok_info["bos_token_id"], tok_info["eot_token_id"]
    print(f"tokenizer: vocab {V}, bos {bos}, eos {tok_info['eos_token_id']}, eot {eot}")

    # Fixed input sequences: 24 tokens of text (starts with bos), a chat prompt, a single bos.
    text = "The small river ran past the mill and under the old stone bridge. In 1869 the railway came."
    seq0 = [bos] + tok.encode(text, add_special_tokens=False).ids
    assert len(seq0) >= 24, len(seq0)
    seq0 = seq0[:24]
    seq1 = tok.encode(f"{BOS}User: How are you?{EOT}Assistant: ", add_special_tokens=False).ids
    seq2 = [bos]
    seqs = [seq0, seq1, seq2]
    print("sequences:", [len(s) for s in seqs])

    manifest = {}
    results = {}  # name -> logits list
    summary_rows = []

    # Master latent weights for every BitNet-architecture fixture.  The bf16-rounded copy is the
    # "-bf16 checkpoint"; all packed variants are quantized from it, so packed and online agree.
    W_master = make_latent_weights(1234, V)
    W16 = round_to(W_master, torch.bfloat16)

    def run_hf(name: str, expected_kind: str, allow_missing=()) -> list[torch.Tensor]:
        model, info = load_hf(BITNET_DIR / name)
        check_loading_info(info, name, allow_missing)
        check_module_kind(model, expected_kind)
        theta_cfg = BITNET_THETA[name]
        inv = model.model.rotary_emb.inv_freq
        expect = 1.0 / (theta_cfg ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).float() / HEAD_DIM))
        assert torch.allclose(inv.float(), expect, rtol=1e-6), (name, "rope theta not honoured")
        lg = hf_logits(model, seqs)
        results[name] = lg
        return lg, model

    BITNET_THETA = {}

    qc_packed = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
    qc_auto_off = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    qc_online = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}

    # ---- float_noquant: plain float linears (no quantization_config) ----------------------
    name = "float_noquant"
    BITNET_THETA[name] = 500000.0
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=None, dtype=torch.bfloat16), float_state_dict(W16, torch.bfloat16), tok, tok_info)
    lg_float, _ = run_hf(name, "float")
    ref_float = [
        reference_forward(W16, s, heads=HEADS, kv_heads=KV_HEADS, theta=500000.0, act="relu2",
                          sub_norm_names=("attn_sub_norm", "ffn_sub_norm"), quantize=False)
        for s in seqs
    ]
    d_reimpl_float = max_diff(lg_float, ref_float)
    assert d_reimpl_float < 1e-4, d_reimpl_float

    # ---- packed: microsoft/bitnet-b1.58-2B-4T layout ---------------------------------------
    name = "packed"
    BITNET_THETA[name] = 500000.0
    sd_packed = packed_state_dict(W16, scale_mode="reciprocal", float_dtype=torch.bfloat16, scale_dtype=torch.float32)
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=qc_packed, dtype=torch.bfloat16), sd_packed, tok, tok_info)
    lg_packed, model_packed = run_hf(name, "bitlinear")
    greedy_toks, greedy_logits, greedy_gap = greedy_reference(model_packed, seq0)
    del model_packed

    # ---- online: bf16 latent weights, quantized every forward (2B4T-bf16 style) -------------
    name = "online"
    BITNET_THETA[name] = 500000.0
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=qc_online, dtype=torch.bfloat16), float_state_dict(W16, torch.bfloat16), tok, tok_info)
    lg_online, _ = run_hf(name, "autobitlinear_online")
    ref_online = [
        reference_forward(W16, s, heads=HEADS, kv_heads=KV_HEADS, theta=500000.0, act="relu2",
                          sub_norm_names=("attn_sub_norm", "ffn_sub_norm"), quantize=True)
        for s in seqs
    ]
    d_reimpl_online = max_diff(lg_online, ref_online)
    assert d_reimpl_online < 1e-4, d_reimpl_online

    # ---- online_fp32: float32 latent weights (not bf16-rounded) ------------------------------
    name = "online_fp32"
    BITNET_THETA[name] = 500000.0
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=qc_online, dtype=torch.float32), float_state_dict(W_master, torch.float32), tok, tok_info)
    lg_online32, _ = run_hf(name, "autobitlinear_online")
    float32_plain = [
        reference_forward(W_master, s, heads=HEADS, kv_heads=KV_HEADS, theta=500000.0, act="relu2",
                          sub_norm_names=("attn_sub_norm", "ffn_sub_norm"), quantize=False)
        for s in seqs
    ]

    # ---- autobitlinear_offline: packed U8, weight_scale = absmean (multiplies) --------------
    name = "autobitlinear_offline"
    BITNET_THETA[name] = 500000.0
    sd_auto = packed_state_dict(W16, scale_mode="absmean", float_dtype=torch.float32, scale_dtype=torch.float32)
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=qc_auto_off, dtype=torch.float32), sd_auto, tok, tok_info)
    lg_auto, _ = run_hf(name, "autobitlinear_offline")
    # the same file read with the wrong (divide) semantics must be clearly wrong
    wrong_dir = BITNET_DIR / "_tmp_wrong_semantics"
    write_model(wrong_dir, bitnet_config(tok_info, quantization_config=qc_packed, dtype=torch.float32), sd_auto, tok, tok_info)
    BITNET_THETA[wrong_dir.name] = 500000.0
    lg_wrong, _ = run_hf(wrong_dir.name, "bitlinear")
    shutil.rmtree(wrong_dir)
    results.pop(wrong_dir.name)

    # ---- untied: packed + stored float lm_head.weight -------------------------------------------
    name = "untied"
    BITNET_THETA[name] = 500000.0
    g = torch.Generator().manual_seed(777)
    W_untied = dict(W16)
    W_untied["lm_head.weight"] = (torch.randn(V, HIDDEN, generator=g) * 0.35).to(torch.bfloat16).float()
    sd_untied = packed_state_dict(W_untied, scale_mode="reciprocal", float_dtype=torch.float32, scale_dtype=torch.float32)
    assert sd_untied["lm_head.weight"].dtype == torch.float32  # never quantized
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=qc_packed, tie=False), sd_untied, tok, tok_info)
    lg_untied, _ = run_hf(name, "bitlinear")

    # ---- sharded: packed, 3 shards + index, weight_scale stored as bf16 --------------------------
    name = "sharded"
    BITNET_THETA[name] = 500000.0
    sd_sharded = packed_state_dict(W16, scale_mode="reciprocal", float_dtype=torch.float32, scale_dtype=torch.bfloat16)
    keys = sorted(sd_sharded)
    shards = [
        [k for k in keys if not k.startswith("model.layers.")],
        [k for k in keys if k.startswith("model.layers.0.")],
        [k for k in keys if k.startswith("model.layers.1.")],
    ]
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=qc_packed), sd_sharded, tok, tok_info, shards=shards)
    lg_sharded, _ = run_hf(name, "bitlinear")
    # the same tensors in one file with the bf16-rounded scales stored as F32 must give the same logits
    tmp = BITNET_DIR / "_tmp_bf16_scales_as_f32"
    sd_tmp = {k: (v.float() if k.endswith("weight_scale") else v) for k, v in sd_sharded.items()}
    write_model(tmp, bitnet_config(tok_info, quantization_config=qc_packed), sd_tmp, tok, tok_info)
    BITNET_THETA[tmp.name] = 500000.0
    lg_tmp, _ = run_hf(tmp.name, "bitlinear")
    shutil.rmtree(tmp)
    results.pop(tmp.name)

    # ---- rope_parameters: packed, transformers-5 config spelling, theta 10000 -------------------
    name = "rope_parameters"
    BITNET_THETA[name] = 10000.0
    sd_rp = packed_state_dict(W16, scale_mode="reciprocal", float_dtype=torch.float32, scale_dtype=torch.float32)
    write_model(BITNET_DIR / name, bitnet_config(tok_info, quantization_config=qc_packed, theta=10000.0, rope_spelling="rope_parameters"), sd_rp, tok, tok_info)
    lg_rp, _ = run_hf(name, "bitlinear")
    ref_rp_theta = [
        reference_forward(W16, s, heads=HEADS, kv_heads=KV_HEADS, theta=10000.0, act="relu2",
                          sub_norm_names=("attn_sub_norm", "ffn_sub_norm"), quantize=True)
        for s in seqs
    ]

    # ---- onebitllm: 1bitLLM/bitnet_b1_58 layout (llama, fp16 latent, SiLU, extra norms) ------
    name = "onebitllm"
    W1 = make_latent_weights(4321, V, kv_heads=HEADS, sub_norm_names=("inner_attn_ln", "ffn_layernorm"))
    W1 = round_to(W1, torch.float16)
    write_model(BITNET_DIR / name, onebitllm_config(tok_info), float_state_dict(W1, torch.float16), tok, tok_info)
    kw1 = dict(heads=HEADS, kv_heads=HEADS, theta=10000.0, act="silu", sub_norm_names=("inner_attn_ln", "ffn_layernorm"))
    # The reference: transformers' Llama with the 1bitLLM quantization applied (onebitllm_transformers).
    model_1bit = onebitllm_transformers(BITNET_DIR / name)
    lg_1bit = hf_logits(model_1bit, seqs)
    # greedy from the chat prompt: from seq0 the 13th step of this model lands 4e-6 quantization steps
    # from an activation rounding boundary (see greedy_margin), where a ulp decides the int8 code
    greedy_1bit_toks, greedy_1bit_logits, greedy_1bit_gap = greedy_reference(model_1bit, seq1)
    del model_1bit
    results[name] = lg_1bit
    lg_1bit_reimpl = [reference_forward(W1, s, quantize=True, **kw1) for s in seqs]
    lg_1bit_float = [reference_forward(W1, s, quantize=False, **kw1) for s in seqs]
    # What a naive AutoModel load does with it (gotcha: plain Llama, sub-norms dropped, no quant).
    from transformers import AutoModelForCausalLM

    naive = AutoModelForCausalLM.from_pretrained(str(BITNET_DIR / name), dtype=torch.float32, attn_implementation="eager").eval()
    assert type(naive).__name__ == "LlamaForCausalLM"
    lg_naive = hf_logits(naive, seqs)
    del naive

    # ------------------------------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------------------------------
    checks = {}

    def check(label: str, value: float, ok: bool, what: str) -> None:
        checks[label] = {"max_abs_diff": sig(value), "ok": ok, "what": what}
        summary_rows.append((label, value, ok, what))
        if not ok:
            raise AssertionError(f"check failed: {label} = {value} ({what})")

    check("reimpl_vs_transformers_float", d_reimpl_float, d_reimpl_float < 1e-4,
          "reference_forward(quantize=False) == transformers float_noquant")
    check("reimpl_vs_transformers_online", d_reimpl_online, d_reimpl_online < 1e-4,
          "reference_forward(quantize=True) == transformers online (validates the 1bitLLM reference)")
    d = max_diff(lg_packed, lg_online)
    check("packed_vs_online", d, d < 1e-4, "packed (ternary from the bf16 latents) == online (same latents)")
    d = max_diff(lg_auto, lg_packed)
    check("autobitlinear_offline_vs_packed", d, d < 1e-4, "absmean-multiply == reciprocal-divide")
    d = max_diff(lg_wrong, lg_packed)
    check("autobitlinear_file_read_as_bitlinear", d, d > 0.5, "wrong scale semantics must be far off")
    d = max_diff(lg_packed, lg_float)
    check("packed_vs_float_noquant", d, d > 0.5, "the quantized model differs from plain float linears")
    d = max_diff(lg_online, lg_float)
    check("online_vs_float_noquant", d, d > 0.5, "online quantization really happens")
    d = max_diff(lg_online32, float32_plain)
    check("online_fp32_vs_its_float", d, d > 0.5, "online_fp32 really quantizes")
    d = max_diff(lg_online32, lg_online)
    check("online_fp32_vs_online_bf16", d, d > 0, "full-precision latents differ slightly from the bf16-rounded ones")
    d = max_diff(lg_sharded, lg_packed)
    check("sharded_vs_packed", d, 0 < d < 0.5, "same weights, weight_scale rounded to bf16")
    d = max_diff(lg_sharded, lg_tmp)
    check("sharded_vs_single_file_f32_scales", d, d < 1e-5,
          "shards + BF16 weight_scale == one file with those scale values as F32 (bf16 scale is upcast)")
    d = max_diff(lg_untied, lg_packed)
    check("untied_vs_packed", d, d > 0.5, "a stored lm_head.weight is used instead of the embeddings")
    d = max_diff(lg_rp, ref_rp_theta)
    check("rope_parameters_vs_reimpl_theta_1e4", d, d < 1e-4, "rope_parameters.rope_theta=10000 is honoured")
    d = max_diff(lg_rp, lg_packed)
    check("rope_parameters_vs_packed", d, d > 1e-3, "theta 1e4 vs 5e5 changes the logits")
    d = max_diff(lg_1bit, lg_1bit_reimpl)
    check("onebitllm_transformers_vs_reimpl", d, d < 1e-4,
          "transformers Llama + AutoBitLinear (the reference) == reference_forward's 1bitLLM forward")
    d = max_diff(lg_1bit, lg_1bit_float)
    check("onebitllm_vs_its_float", d, d > 0.5, "the 1bitLLM reference quantizes")
    d = max_diff(lg_1bit, lg_naive)
    check("onebitllm_vs_naive_llama_load", d, d > 0.5, "AutoModel (plain Llama) gives wrong logits for 1bitLLM")

    # rounding margins of the integer codes (see MARGINS), computed with reference_forward
    def greedy_margin(W, prompt, toks, **kw):
        """Smallest activation rounding margin over a greedy run's positions (prompt + tokens
        fed back): a greedy reference is only useful where a ulp cannot flip an int8 code."""
        MARGINS.update(activation=float("inf"), weight=float("inf"))
        reference_forward(W, list(prompt) + list(toks[:-1]), quantize=True, **kw)
        m = MARGINS["activation"]
        assert m > 2e-5, ("greedy run too close to a rounding boundary; pick another prompt", m)
        return sig(m)

    def margins_of(W, **kw):
        MARGINS.update(activation=float("inf"), weight=float("inf"))
        for s in seqs:
            reference_forward(W, s, quantize=True, **kw)
        return {"activation_min_steps": sig(MARGINS["activation"]), "weight_min_steps": sig(MARGINS["weight"])}

    kw_b = dict(heads=HEADS, kv_heads=KV_HEADS, act="relu2", sub_norm_names=("attn_sub_norm", "ffn_sub_norm"))

    # How far a correct engine with another float evaluation order may land: the re-implementation
    # with float64 linears, against each reference.
    def perturbed(ref, W, quantize=True, **kw):
        alt = [reference_forward(W, s, quantize=quantize, float64_matmul=True, **kw) for s in seqs]
        return {"max_abs_diff": sig(max_diff(alt, ref)),
                "argmax_agree": all(bool((a.argmax(-1) == r.argmax(-1)).all()) for a, r in zip(alt, ref))}

    perturb = {
        "packed": perturbed(lg_packed, W16, theta=500000.0, **kw_b),
        "autobitlinear_offline": perturbed(lg_auto, W16, theta=500000.0, **kw_b),
        "online": perturbed(lg_online, W16, theta=500000.0, **kw_b),
        "online_fp32": perturbed(lg_online32, W_master, theta=500000.0, **kw_b),
        "float_noquant": perturbed(lg_float, W16, quantize=False, theta=500000.0, **kw_b),
        "untied": perturbed(lg_untied, W_untied, theta=500000.0, **kw_b),
        "rope_parameters": perturbed(lg_rp, W16, theta=10000.0, **kw_b),
        "onebitllm": perturbed(lg_1bit, W1, **kw1),
        "sharded": None,
    }
    greedy_margins = {
        "packed": greedy_margin(W16, seq0, greedy_toks, theta=500000.0, **kw_b),
        "onebitllm": greedy_margin(W1, seq1, greedy_1bit_toks, **kw1),
    }
    m16 = margins_of(W16, theta=500000.0, **kw_b)
    margins = {
        "packed": m16, "autobitlinear_offline": m16, "online": m16, "untied": m16,
        "online_fp32": margins_of(W_master, theta=500000.0, **kw_b),
        "rope_parameters": margins_of(W16, theta=10000.0, **kw_b),
        "onebitllm": margins_of(W1, **kw1),
        "float_noquant": None,
        "sharded": None,  # its bf16-rounded scales shift the activations; not computed
    }

    # ------------------------------------------------------------------------------------------
    # references + manifest
    # ------------------------------------------------------------------------------------------
    common_cfg = {"hidden": HIDDEN, "intermediate": INTER, "layers": LAYERS, "heads": HEADS, "head_dim": HEAD_DIM, "vocab": V}
    fixtures = {
        "packed": dict(
            description="microsoft/bitnet-b1.58-2B-4T layout: U8 packed ternary (4 per byte, blocked along "
            "output rows), weight_scale = 1/absmean (F32 [1], divides), embeddings/norms BF16, tied lm_head",
            quantization="bitlinear/offline", weights="U8 + F32 weight_scale, BF16 floats", tied=True,
            kv_heads=KV_HEADS, rope_theta=500000.0, rope_spelling="rope_theta", activation="relu2",
            reference="transformers", expect_quantized=True),
        "autobitlinear_offline": dict(
            description="packed U8 like 'packed' but linear_class autobitlinear: weight_scale = absmean (F32 [1], multiplies)",
            quantization="autobitlinear/offline", weights="U8 + F32 weight_scale, F32 floats", tied=True,
            kv_heads=KV_HEADS, rope_theta=500000.0, rope_spelling="rope_theta", activation="relu2",
            reference="transformers", expect_quantized=True),
        "online": dict(
            description="2B4T-bf16 style: BF16 latent weights quantized on the fly (per-tensor absmean ternary, per-token int8)",
            quantization="autobitlinear/online", weights="BF16", tied=True, kv_heads=KV_HEADS,
            rope_theta=500000.0, rope_spelling="rope_theta", activation="relu2", reference="transformers",
            expect_quantized=True),
        "online_fp32": dict(
            description="like 'online' but F32 latent weights (full precision, not bf16-rounded)",
            quantization="autobitlinear/online", weights="F32", tied=True, kv_heads=KV_HEADS,
            rope_theta=500000.0, rope_spelling="rope_theta", activation="relu2", reference="transformers",
            expect_quantized=True),
        "float_noquant": dict(
            description="BitNet config without quantization_config: transformers runs plain float linears (no quantization at all)",
            quantization="none", weights="BF16", tied=True, kv_heads=KV_HEADS, rope_theta=500000.0,
            rope_spelling="rope_theta", activation="relu2", reference="transformers", expect_quantized=False),
        "untied": dict(
            description="packed (bitlinear/offline, F32 floats) with tie_word_embeddings false and a stored float lm_head.weight",
            quantization="bitlinear/offline", weights="U8 + F32 weight_scale, F32 floats", tied=False,
            kv_heads=KV_HEADS, rope_theta=500000.0, rope_spelling="rope_theta", activation="relu2",
            reference="transformers", expect_quantized=True),
        "sharded": dict(
            description="packed (bitlinear/offline) split into 3 safetensors shards + model.safetensors.index.json; "
            "weight_scale stored as BF16 [1]",
            quantization="bitlinear/offline", weights="U8 + BF16 weight_scale, F32 floats", tied=True,
            kv_heads=KV_HEADS, rope_theta=500000.0, rope_spelling="rope_theta", activation="relu2",
            reference="transformers", expect_quantized=True),
        "rope_parameters": dict(
            description="packed (bitlinear/offline, F32 floats) with the transformers-5 config spelling "
            "(rope_parameters.rope_theta = 10000, dtype instead of torch_dtype)",
            quantization="bitlinear/offline", weights="U8 + F32 weight_scale, F32 floats", tied=True,
            kv_heads=KV_HEADS, rope_theta=10000.0, rope_spelling="rope_parameters", activation="relu2",
            reference="transformers", expect_quantized=True),
        "onebitllm": dict(
            description="1bitLLM/bitnet_b1_58 layout: model_type llama, F16 latent weights, MHA, SiLU, extra norms "
            "self_attn.inner_attn_ln / mlp.ffn_layernorm, quantized on the fly (per-tensor absmean ternary, "
            "per-token int8); reference: transformers LlamaForCausalLM with the 1bitLLM quantization applied "
            "(transformers cannot load the layout as is)",
            quantization="1bitllm (online, input_bits 8, weight_bits 1)", weights="F16", tied=True,
            kv_heads=HEADS, rope_theta=10000.0, rope_spelling="rope_theta", activation="silu",
            reference="transformers LlamaForCausalLM, every decoder linear an AutoBitLinear(online_quant=True), "
            "o_proj / down_proj with use_rms_norm=True holding inner_attn_ln / ffn_layernorm "
            "(tools/make_fixtures.py:onebitllm_transformers)", expect_quantized=True),
    }
    related_checks = {
        "packed": ["packed_vs_online", "packed_vs_float_noquant", "autobitlinear_offline_vs_packed"],
        "autobitlinear_offline": ["autobitlinear_offline_vs_packed", "autobitlinear_file_read_as_bitlinear"],
        "online": ["packed_vs_online", "online_vs_float_noquant", "reimpl_vs_transformers_online"],
        "online_fp32": ["online_fp32_vs_its_float", "online_fp32_vs_online_bf16"],
        "float_noquant": ["reimpl_vs_transformers_float"],
        "untied": ["untied_vs_packed"],
        "sharded": ["sharded_vs_packed", "sharded_vs_single_file_f32_scales"],
        "rope_parameters": ["rope_parameters_vs_reimpl_theta_1e4", "rope_parameters_vs_packed"],
        "onebitllm": ["onebitllm_transformers_vs_reimpl", "onebitllm_vs_its_float", "onebitllm_vs_naive_llama_load"],
    }
    for name, f in fixtures.items():
        folder = BITNET_DIR / name
        meta = {
            "format": name,
            **f,
            "config": common_cfg | {"kv_heads": f["kv_heads"]},
            "checks": {c: checks[c] for c in related_checks[name]},
            "float64_linears_vs_reference": perturb[name],
            "float64_linears_note": "the re-implementation with float64 linears vs this reference: a guide "
            "for test tolerances (a correct engine with another float evaluation order lands about this close)",
            "rounding_margins": margins[name],
            "rounding_margins_note": "smallest distance, in quantization steps, of any pre-rounding value "
            "(activation x*127/absmax; online weights |W|/absmean vs 0.5) to a rounding boundary over these "
            "sequences; an engine whose pre-rounding values are closer than this to the reference gets the "
            "same integer codes (weight margin only matters for online formats)",
        }
        greedy = None
        if name in ("packed", "onebitllm"):
            i, toks, step_logits, gap = ((0, greedy_toks, greedy_logits, greedy_gap) if name == "packed" else
                                         (1, greedy_1bit_toks, greedy_1bit_logits, greedy_1bit_gap))
            greedy = {i: (toks, step_logits)}
            meta["greedy"] = {
                "how": f"transformers generate(do_sample=False, max_new_tokens=16, eos_token_id=None) from "
                f"input_ids_{i}, fp32, KV cache; equal to a full-recompute argmax loop",
                "min_top1_top2_gap": sig(gap),
                "activation_min_steps": greedy_margins[name],
            }
        write_reference(folder, seqs, results[name], meta, greedy)
        files = sorted(p.name for p in folder.iterdir())
        manifest[name] = {"folder": f"tests/fixtures/bitnet/{name}", **f, "files": files}

    write_json(
        BITNET_DIR / "manifest.json",
        {
            "generated_by": "tools/make_fixtures.py",
            "command": COMMAND,
            "versions": versions(),
            "tokenizer": "tests/fixtures/tokenizer (copied into every model folder)",
            "sequences": [list(s) for s in seqs],
            "fixtures": manifest,
            "checks": checks,
        },
    )

    # ------------------------------------------------------------------------------------------
    print("\nchecks (max |logit difference| over all sequences):")
    for label, value, ok, what in summary_rows:
        print(f"  {'ok ' if ok else 'BAD'} {label:40s} {value:10.3g}  {what}")
    print(f"\ngreedy_0 (packed): {greedy_toks}  min top1-top2 gap {greedy_gap:.3g}")
    print(f"greedy_1 (onebitllm): {greedy_1bit_toks}  min top1-top2 gap {greedy_1bit_gap:.3g}")
    print("\nfixtures:")
    total = 0
    for p in sorted(FIX.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
    for name in fixtures:
        folder = BITNET_DIR / name
        size = sum(p.stat().st_size for p in folder.iterdir())
        m = margins[name]
        ms = f"act margin {m['activation_min_steps']:.2g}, weight margin {m['weight_min_steps']:.2g}" if m else ""
        if perturb[name]:
            ms += f"; f64-linears diff {perturb[name]['max_abs_diff']:.2g} argmax same {perturb[name]['argmax_agree']}"
        print(f"  bitnet/{name:24s} {size / 1024:7.1f} KiB  {fixtures[name]['quantization']:28s} {ms}")
    print(f"total tests/fixtures size: {total / 1024:.1f} KiB")
    digest = hashlib.sha256()
    for p in sorted(FIX.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(FIX)).encode())
            digest.update(p.read_bytes())
    print(f"sha256 of all fixture files: {digest.hexdigest()}")


def publish(names: list[str], tmp_fix: Path) -> None:
    """Copy the fixtures `names` (bitnet folder names, or "tokenizer") from a full run in tmp_fix
    into tests/fixtures, and merge their entries (and the checks that concern them) into the
    committed manifest.json; every other fixture keeps its bytes."""
    tmp_manifest = json.loads((tmp_fix / "bitnet" / "manifest.json").read_text(encoding="utf-8"))
    manifest = json.loads((BITNET_DIR / "manifest.json").read_text(encoding="utf-8"))
    mine = set()
    for name in names:
        src = tmp_fix / "tokenizer" if name == "tokenizer" else tmp_fix / "bitnet" / name
        dst = TOK_DIR if name == "tokenizer" else BITNET_DIR / name
        if not src.is_dir():
            raise SystemExit(f"--only: no fixture named {name!r}")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        if name != "tokenizer":
            manifest["fixtures"][name] = tmp_manifest["fixtures"][name]
            mine |= set(json.loads((src / "reference.json").read_text(encoding="utf-8"))["checks"])
    old = manifest["checks"]
    manifest["checks"] = {k: (v if k in mine or k not in old else old[k]) for k, v in tmp_manifest["checks"].items()}
    for key in ("generated_by", "command", "versions", "tokenizer", "sequences"):
        assert manifest[key] == tmp_manifest[key], (key, "differs from the committed manifest: regenerate all")
    write_json(BITNET_DIR / "manifest.json", manifest)
    print(f"published {', '.join(names)} into {FIX}; the other fixtures are untouched")


def main(argv: list[str] | None = None) -> None:
    global FIX, TOK_DIR, BITNET_DIR
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", metavar="NAME[,NAME]",
                    help="make everything in a temporary folder, then copy only these fixtures (bitnet folder "
                    "names, or 'tokenizer') into tests/fixtures and merge their manifest entries: the others "
                    "keep their bytes (torch's float32 matmul rounds differently on another CPU, so a full "
                    "run elsewhere moves every reference by a few ulps)")
    ap.add_argument("--recurrent", action="store_true",
                    help="make only the Mamba / Mamba-2 / RWKV-4 fixtures (tests/fixtures/recurrent, "
                    "tools/recurrent_fixtures.py); the BitNet fixtures and the tokenizer keep their bytes")
    args = ap.parse_args(argv)
    if args.recurrent:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import recurrent_fixtures
        recurrent_fixtures.make(FIX, TOK_DIR, write_json, versions, COMMAND)
        return
    if not args.only:
        make_all()
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    real = (FIX, TOK_DIR, BITNET_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        FIX = Path(tmp) / "fixtures"
        TOK_DIR, BITNET_DIR = FIX / "tokenizer", FIX / "bitnet"
        make_all()
        tmp_fix = FIX
        FIX, TOK_DIR, BITNET_DIR = real
        publish(names, tmp_fix)


if __name__ == "__main__":
    main()
