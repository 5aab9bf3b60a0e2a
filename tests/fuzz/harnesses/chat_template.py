"""The chat template renderer (engine/tokenizer.py: jinja2's immutable sandbox, bounded): the bytes
are a template, then optionally a NUL byte and the messages as JSON. Allowed: the rendered text
and its token ids, a ValueError (the template does not parse, raises, loops past its time, or
writes past its output bound), or the documented TypeError for messages that are not a list of
dicts. The render must not reach outside the sandbox: a secret in the process environment and
in a module global never appears in the output."""

import json
import os
from pathlib import Path

from ryzjupyter.engine import tokenizer as tokenizer_module
from ryzjupyter.engine.tokenizer import Tokenizer

from ..common import Finding, expect

tokenizer_module.CHAT_TEMPLATE_SECONDS = 1.0      # the bound is what is checked, not its value
SECRET = "ryz-fuzz-secret-" + os.urandom(6).hex()
os.environ["RYZ_FUZZ_SECRET"] = SECRET
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "bitnet" / "packed"
CONFIG = json.loads((FIXTURE / "tokenizer_config.json").read_text())
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{ there }}"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "naïve 🙂"}]


def one_input(data: bytes):
    template, _, rest = data.partition(b"\0")
    messages = CHAT
    if rest:
        try:
            messages = json.loads(rest.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            messages = CHAT + [{"role": "user", "content": rest.decode("utf-8", "replace")}]
    tok = Tokenizer(FIXTURE / "tokenizer.json", CONFIG, chat_template=template.decode("utf-8", "replace"))
    if tok.chat_template is None:
        return
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        expect(lambda: tok.apply_chat_template(messages, tokenize=False), TypeError)   # the documented one
        return
    text = expect(lambda: tok.apply_chat_template(messages, tokenize=False), ValueError)
    if text is None:
        return
    if not isinstance(text, str):
        raise Finding(f"the template rendered a {type(text).__name__}")
    if SECRET in text:
        raise Finding("the template read the process environment or a Python global: the sandbox leaked")
    ids = tok.encode(text, add_special_tokens=False)
    if len(text) > 2_000_000 + 4 * len(json.dumps(messages, default=str)) or len(ids) > 4 * len(text) + 8:
        raise Finding(f"{len(text)} characters of output went past the bound")
