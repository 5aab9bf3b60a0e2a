"""Writes tests/engine/data/tiny_tok/: a small byte-level BPE tokenizer with Llama-3 style special
tokens and chat template, and (when run with transformers available, e.g. /work/venv-torch)
chat_reference.json: transformers' apply_chat_template output for a few conversations.

    /work/venv-torch/bin/python tests/engine/data/make_tiny_tokenizer.py
"""
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = Path(__file__).parent / "tiny_tok"
TEXT = """The KV cache stores keys and values so that a new token only attends to what came before.
Ternary weights take the values -1, 0 and +1; activations are quantized to eight bits per token.
Ünïcödé tëxt, emoji 🙂🚀 and CJK 日本語 must stream without broken characters.
User: How are you? Assistant: I am fine, thank you. System: Be brief.
""" * 4

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
            "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
            " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
            "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# a second template exercising the sandbox helpers transformers provides
TEMPLATE2 = ("{%- set ns = namespace(n=0) -%}{%- for m in messages -%}"
             "{%- if m.role not in ['system', 'user', 'assistant'] -%}{{ raise_exception('bad role ' + m.role) }}"
             "{%- endif -%}{%- if m.role == 'system' -%}{%- continue -%}{%- endif -%}"
             "{%- set ns.n = ns.n + 1 -%}{{ ns.n }}:{{ m | tojson }}\n{%- endfor -%}"
             "{%- if add_generation_prompt %}Assistant: {% endif -%}")


def build():
    HERE.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       pair="<|begin_of_text|> $A $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    tok.save(str(HERE / "tokenizer.json"))
    (HERE / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}, indent=1))
    (HERE / "config.json").write_text(json.dumps({"eos_token_id": tok.token_to_id("<|end_of_text|>"),
                                                  "bos_token_id": bos}))


CONVERSATIONS = [
    [{"role": "user", "content": "How are you?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi \n"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Ünïcödé 🙂"}],
]


def reference():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(HERE))
    out = []
    for template in (TEMPLATE, TEMPLATE2):
        for conv in CONVERSATIONS:
            for agp in (True, False):
                text = tok.apply_chat_template(conv, add_generation_prompt=agp, tokenize=False,
                                               chat_template=template)
                ids = tok.apply_chat_template(conv, add_generation_prompt=agp, tokenize=True,
                                              chat_template=template)
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
                out.append({"template": template, "messages": conv, "add_generation_prompt": agp,
                            "text": text, "ids": list(ids)})
    (HERE / "chat_reference.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    build()
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers not installed: chat_reference.json not written")
    else:
        reference()
