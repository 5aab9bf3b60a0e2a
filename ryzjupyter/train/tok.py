"""Byte-level BPE tokenizer trained with `tokenizers`, Llama-3 style special tokens and chat template."""
from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIALS = [BOS, EOS, EOT]  # ids 0, 1, 2

# Same prompt format as microsoft/bitnet-b1.58-2B-4T: "<|begin_of_text|>System: ...<|eot_id|>User: ...<|eot_id|>Assistant: "
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def train_tokenizer(text_iter, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text_iter, trainer=trainer)
    return tok


def render_chat(messages, add_generation_prompt=True) -> str:
    """Python rendering of CHAT_TEMPLATE (used to build training samples; equal to the jinja output)."""
    out = []
    for i, m in enumerate(messages):
        s = m["role"].capitalize() + ": " + m["content"].strip() + EOT
        out.append(BOS + s if i == 0 else s)
    if add_generation_prompt:
        out.append("Assistant: ")
    return "".join(out)


def tokenizer_config(model_max_length: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOT,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, t in enumerate(SPECIALS)},
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(tok: Tokenizer, out_dir: str, model_max_length: int):
    tok.save(f"{out_dir}/tokenizer.json")
    with open(f"{out_dir}/tokenizer_config.json", "w") as f:
        json.dump(tokenizer_config(model_max_length), f, indent=2)
        f.write("\n")
    with open(f"{out_dir}/special_tokens_map.json", "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOT, "pad_token": EOS}, f, indent=2)
        f.write("\n")


def main(argv=None):
    """python -m ryzjupyter.train.tok --corpus kjv-train.txt --vocab 4096 --out tokenizer.json"""
    import argparse

    from .corpus import text_to_chapters

    ap = argparse.ArgumentParser(description="train the byte-level BPE tokenizer on the training corpus")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    chapters = text_to_chapters(open(a.corpus, encoding="utf-8").read())
    tok = train_tokenizer((v for ch in chapters for v in ch), a.vocab)
    tok.save(a.out)
    print(f"{a.out}: vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    main()
